"""De-identification: every attribute of PS3.15 Table E.1-1 on one richly populated instance."""

from __future__ import annotations

import io
import re

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsynth.dicom.deid import DUMMY_TEXT, DeidPolicy, Deidentifier, profile

KEY = b"k" * 32
NESTED_UID, NESTED_INSTITUTION = "1.2.826.0.1.9999.77", "NESTEDHOSPITAL"


def _value(vr: str, n: int) -> object:
    """A value of ``vr`` unique to row ``n`` and easy to find in bytes."""
    token = f"ORIG{n:04d}"
    return {
        "PN": f"{token}^Given", "DA": f"2017{1 + n % 12:02d}{1 + n % 28:02d}", "TM": "114815", "DT": f"2017{1 + n % 12:02d}{1 + n % 28:02d}114815",
        "UI": f"1.2.826.0.1.{1000 + n}", "AS": "045Y", "CS": f"CS{n}", "IS": str(n), "DS": f"{n}.5",
        "US": n, "SS": n, "UL": n, "SL": n, "FL": float(n), "FD": float(n), "UV": n, "SV": n, "AT": Tag(0x0010, 0x0010),
        "OB": token.encode(), "OW": token.encode(), "UN": token.encode(), "OD": token.encode(), "OF": token.encode(),
        "OL": token.encode(), "OV": token.encode(),
    }.get(vr, token)


def _rich() -> tuple[Dataset, dict[int, tuple[str, object]]]:
    """An instance holding every exact-tag row of the table (and private attributes, nested items)."""
    exact, _ = profile()
    ds = Dataset()
    originals: dict[int, tuple[str, object]] = {}
    for n, tag in enumerate(sorted(exact)):
        if Tag(tag).group == 0x0002 or Tag(tag).group == 0x0000 or Tag(tag).group >= 0xFFFA:
            continue  # command, meta and the padding/signature groups are not dataset attributes here
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            vr = "LO"
        if vr == "SQ":
            item = Dataset()
            item.ReferencedSOPInstanceUID = NESTED_UID
            item.InstitutionName = NESTED_INSTITUTION
            item.add_new(0x00091001, "LO", "PRIVATE-NESTED")
            ds.add_new(tag, "SQ", Sequence([item]))
            originals[tag] = ("SQ", None)
        else:
            value = _value(vr, n)
            ds.add_new(tag, vr, value)
            originals[tag] = (vr, value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.PatientID, ds.PatientName = "HOSP-123456", "Doe^Jane"
    ds.StudyDate = "20180918"
    originals[0x00080020] = ("DA", "20180918")
    ds.add_new(0x00291010, "LO", "PRIVATE-TOP")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "SCANNERSTATION"
    return ds, originals


@pytest.mark.parametrize("retain_dates", [False, True])
def test_every_attribute_of_the_profile_gets_its_action(retain_dates: bool) -> None:
    ds, originals = _rich()
    deid = Deidentifier(DeidPolicy(KEY, retain_dates=retain_dates))
    out = deid.apply(ds)
    exact, _ = profile()
    checked = 0
    for tag, (vr, original) in originals.items():
        rule = exact[tag]
        if tag in (0x00100010, 0x00100020):
            continue  # PatientName/PatientID: the pseudonym, checked below
        action = "C" if retain_dates and rule.modified_dates == "C" else rule.chosen
        where = f"{rule.name} ({tag:08X}) {rule.action}->{action}"
        if action == "X":
            assert tag not in out, where
        elif vr == "SQ":
            if action == "Z":
                assert tag in out and len(out[tag].value) == 0, where
            else:
                (item,) = out[tag].value
                assert item.ReferencedSOPInstanceUID == deid.uid(NESTED_UID), where
                assert item.get("InstitutionName") != NESTED_INSTITUTION, where  # the table applies inside sequences too
                assert not any(e.tag.is_private for e in item), where
        elif action == "Z":
            assert tag in out and out[tag].value in (None, "", b""), where
        elif action == "U" or (action == "D" and vr == "UI"):
            assert out[tag].value == deid.uid(original) and re.fullmatch(r"2\.25\.\d+", out[tag].value), where
        elif action == "D":
            assert tag in out and out[tag].value not in (None, "", b"") and out[tag].value != original, where
        elif action == "C":
            if vr == "DA":
                shifted = (np.datetime64(f"{original[:4]}-{original[4:6]}-{original[6:8]}") - np.timedelta64(deid.shift_days("HOSP-123456"), "D"))
                assert out[tag].value == str(shifted).replace("-", ""), where
            elif vr == "DT":
                assert out[tag].value[8:] == original[8:] and out[tag].value[:8] != original[:8], where
            else:
                assert out[tag].value == original, where
        else:
            raise AssertionError(f"untested action {action} for {where}")
        checked += 1
    assert checked > 550  # (nearly) every row of the table was on the instance and checked


def test_identity_is_a_keyed_pseudonym_and_what_was_done_is_recorded() -> None:
    ds, _ = _rich()
    deid = Deidentifier(DeidPolicy(KEY))
    out = deid.apply(ds)
    assert out.PatientID == out.PatientName == deid.pseudonym("HOSP-123456")
    assert Deidentifier(DeidPolicy(KEY)).pseudonym("HOSP-123456") == out.PatientID  # stable: the hospital can link back
    assert Deidentifier(DeidPolicy(b"another-key-000000")).pseudonym("HOSP-123456") != out.PatientID
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert "StudyDate" in out and not out.StudyDate  # Z without the dates option
    kept = Deidentifier(DeidPolicy(KEY, retain_dates=True)).apply(ds)
    assert [c.CodeValue for c in kept.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert kept.LongitudinalTemporalInformationModified == "MODIFIED" and kept.StudyDate != "20180918"


def test_uids_map_consistently_and_the_meta_header_follows() -> None:
    deid = Deidentifier(DeidPolicy(KEY))
    a, b = Dataset(), Dataset()
    study = generate_uid()
    for ds in (a, b):
        ds.StudyInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = study, generate_uid(), "1.2.840.10008.5.1.4.1.1.4"
        ds.PatientID = "X"
    out_a, out_b = deid.apply(a), deid.apply(b)
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID != study
    assert out_a.SOPInstanceUID != out_b.SOPInstanceUID
    assert out_a.file_meta.MediaStorageSOPInstanceUID == out_a.SOPInstanceUID
    assert len(out_a.StudyInstanceUID) <= 64


def test_no_original_identifier_survives_in_the_written_bytes() -> None:
    ds, originals = _rich()
    out = Deidentifier(DeidPolicy(KEY)).apply(ds)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    written = buffer.getvalue()
    for needle in (b"HOSP-123456", b"Doe^Jane", b"PRIVATE-TOP", b"PRIVATE-NESTED", b"SCANNERSTATION", NESTED_UID.encode(),
                   NESTED_INSTITUTION.encode(), b"20180918"):
        assert needle not in written, needle
    exact, _ = profile()
    for tag, (vr, original) in originals.items():
        if exact[tag].chosen in "XZDU" and isinstance(original, str) and original.startswith("ORIG"):
            assert original.encode() not in written, exact[tag].name
    reread = pydicom.dcmread(io.BytesIO(written))
    assert reread.PatientIdentityRemoved == "YES"


def test_possible_burned_in_text_is_flagged() -> None:
    deid = Deidentifier(DeidPolicy(KEY))

    def make(**attrs) -> Dataset:
        ds = Dataset()
        for k, v in attrs.items():
            setattr(ds, k, v)
        return ds

    assert deid.burned_in_reason(make(BurnedInAnnotation="YES", Modality="MR")) == "BurnedInAnnotation is YES"
    assert "secondary capture" in deid.burned_in_reason(make(SOPClassUID="1.2.840.10008.5.1.4.1.1.7", Modality="OT"))
    assert "ultrasound" in deid.burned_in_reason(make(Modality="US"))
    assert deid.burned_in_reason(make(Modality="US", BurnedInAnnotation="NO")) is None
    assert deid.burned_in_reason(make(Modality="MR")) is None


def test_dummy_text_is_a_valid_value_for_short_vrs() -> None:
    assert len(DUMMY_TEXT) <= 16 and DUMMY_TEXT.isupper()


def test_a_mosaic_keeps_only_the_numbers_of_its_csa_header() -> None:
    """The Retain Safe Private Option for Siemens mosaics: a CSA image header rebuilt from the fields
    that unpack it (numbers only; a field holding text is dropped); every other private attribute,
    the rest of the CSA header and a non-mosaic's CSA header go."""
    from medsynth.dicom.mosaic import CSA_CREATOR, csa_image_header, read_csa, write_csa

    ds = Dataset()
    ds.PatientID, ds.SOPInstanceUID, ds.ImageType = "HOSP-1", generate_uid(), ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
    block = ds.private_block(0x0029, CSA_CREATOR, create=True)
    block.add_new(0x10, "OB", write_csa({"NumberOfImagesInMosaic": ("US", ["5"]), "SliceNormalVector": ("FD", ["0", "0.5", "-1"]),
                                         "ProtocolSliceNumber": ("IS", ["Smith^Alice"]), "PatientName": ("PN", ["Smith^Alice"]),
                                         "tProtocolName": ("LO", ["Dr Who's brain"])}))
    block.add_new(0x20, "OB", b"series header: Smith^Alice")
    out = Deidentifier(DeidPolicy(KEY)).apply(ds)
    assert read_csa(csa_image_header(out)) == {"NumberOfImagesInMosaic": ["5"], "SliceNormalVector": ["0.0", "0.5", "-1.0"]}
    assert [e.tag for e in out if e.tag.is_private] == [0x00290010, 0x00291010]
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113111"]
    buffer = io.BytesIO()
    out.file_meta = pydicom.dataset.FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.save_as(buffer, enforce_file_format=False)
    assert b"Smith" not in buffer.getvalue() and b"Dr Who" not in buffer.getvalue()

    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]  # not a mosaic: nothing private is kept
    plain = Deidentifier(DeidPolicy(KEY)).apply(ds)
    assert not [e for e in plain if e.tag.is_private]
    assert [c.CodeValue for c in plain.DeidentificationMethodCodeSequence] == ["113100"]
