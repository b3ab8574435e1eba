"""De-identification of DICOM instances, in memory, before any byte is stored.

Applies the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (the action table is
``basic_profile.tsv`` beside this module) and, when a project asks for it, the Retain Longitudinal
Temporal Information with Modified Dates Option:

* ``X`` removes the attribute, ``Z`` empties it, ``D`` puts a dummy value of its VR in, ``U`` replaces a
  UID with one derived from it by HMAC under the project's key, so the same source UID maps to the same
  new UID in every instance of the project and references between instances keep working.
* A compound action (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) takes the option that keeps the
  dataset conformant whatever the attribute's type: ``U`` where allowed (a reference sequence kept, its
  UIDs replaced — a DICOM-SEG still finds its source images), else ``D``, else ``Z``.
* Private attributes (odd groups) are removed at every level; sequences are walked recursively. The
  one exception, under the Retain Safe Private Option: a Siemens mosaic keeps a CSA image header rebuilt
  to hold only the numbers that unpack it (:func:`medsynth.dicom.mosaic.safe_csa_header`), without
  which its slices could not be told apart.
* PatientID and PatientName become a keyed pseudonym (HMAC of the patient id): the same patient gets
  the same pseudonym, and a hospital holding the key can link back. With the modified-dates option
  on, dates (DA, DT) are shifted by a whole number of days fixed per patient.
* PatientIdentityRemoved, DeidentificationMethod(CodeSequence) and
  LongitudinalTemporalInformationModified record what was done.

Instances that may show identity in their pixels (BurnedInAnnotation YES; secondary capture or
ultrasound not marked NO) are reported by :meth:`Deidentifier.burned_in_reason` so the caller can
quarantine them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import cache
from importlib import resources

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from medsynth.dicom.mosaic import CSA_CREATOR, is_mosaic, safe_csa_header
from medsynth.store.base import ObjectStore
from medsynth.store.projects import Projects

BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")
SAFE_PRIVATE_CODE = ("113111", "DCM", "Retain Safe Private Option")
METHOD = ("PS3.15 E.1 Basic Application Confidentiality Profile", "Retain Longitudinal Modified Dates Option")
SAFE_PRIVATE_METHOD = "Retain Safe Private Option (Siemens mosaic geometry)"
#: Dates move back by 1..MAX_SHIFT_DAYS days, a fixed number per patient.
MAX_SHIFT_DAYS = 3650
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants below it
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR = {
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "PN": DUMMY_TEXT,
    "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0,
}
# A meta-header attribute that names the sending station; the others are rewritten.
_META_SOURCE_AE = (0x0002, 0x0016)
_META_KEEP = {(0x0002, 0x0010)}  # transfer syntax


@dataclass(frozen=True)
class Rule:
    tag: str  # 8 hex digits, 'x' for any
    action: str  # basic-profile action as in the table
    modified_dates: str  # 'C' or ''
    name: str

    @property
    def chosen(self) -> str:
        """The one action applied for this row (see the module docstring for compound actions)."""
        options = self.action.replace("*", "").split("/")
        for preferred in ("U", "D", "Z", "X"):
            if preferred in options:
                return preferred
        return options[0]


@cache
def profile() -> tuple[dict[int, Rule], list[Rule]]:
    """The action table: exact tags, and the rows with wildcard digits (curves, overlays)."""
    text = resources.files("medsynth.dicom").joinpath("basic_profile.tsv").read_text()
    exact: dict[int, Rule] = {}
    wild: list[Rule] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        tag, action, modified, name = line.split("\t")
        rule = Rule(tag, action, modified, name)
        if "x" in tag:
            wild.append(rule)
        else:
            exact[int(tag, 16)] = rule
    return exact, wild


def _rule_for(tag: int) -> Rule | None:
    exact, wild = profile()
    if (rule := exact.get(tag)) is not None:
        return rule
    text = f"{tag:08X}"
    for rule in wild:
        if all(p == "x" or p == c for p, c in zip(rule.tag, text, strict=True)):
            return rule
    return None


@dataclass(frozen=True)
class DeidPolicy:
    """A project's de-identification: its secret key and its options."""

    key: bytes
    retain_dates: bool = False  # the Retain Longitudinal Temporal Information with Modified Dates Option
    allow_burned_in: bool = False


class Deidentifier:
    """De-identify instances for one project (one key)."""

    def __init__(self, policy: DeidPolicy) -> None:
        if len(policy.key) < 16:
            raise ValueError("a de-identification key must have at least 16 bytes")
        self.policy = policy

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.policy.key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def pseudonym(self, patient_id: str) -> str:
        """The patient's pseudonym: ``P`` and 20 hex digits of an HMAC of the id (a safe name)."""
        return "P" + self._mac("patient", patient_id.strip()).hex()[:20]

    def uid(self, uid: str) -> str:
        """A new UID for ``uid`` under the ``2.25`` (UUID-derived) root, the same for the same input."""
        digest = bytearray(self._mac("uid", uid.strip())[:16])
        digest[6] = (digest[6] & 0x0F) | 0x80  # mark it as a name-based UUID (version 8)
        digest[8] = (digest[8] & 0x3F) | 0x80
        return f"2.25.{int.from_bytes(digest, 'big')}"

    def shift_days(self, patient_id: str) -> int:
        return 1 + int.from_bytes(self._mac("dates", patient_id.strip())[:4], "big") % MAX_SHIFT_DAYS

    def burned_in_reason(self, ds: Dataset) -> str | None:
        """Why ``ds`` may carry identity in its pixels, or None. Ignores the project's opt-in."""
        flag = str(ds.get("BurnedInAnnotation", "")).strip().upper()
        if flag == "YES":
            return "BurnedInAnnotation is YES"
        if flag == "NO":
            return None
        if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE):
            return "a secondary capture image without BurnedInAnnotation NO"
        if str(ds.get("Modality", "")).upper() == "US":
            return "an ultrasound image without BurnedInAnnotation NO"
        return None

    def apply(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (file meta included); ``ds`` itself is left as it was."""
        patient_id = str(ds.get("PatientID", "") or "")
        out = Dataset()
        self._walk(ds, out, self.shift_days(patient_id) if self.policy.retain_dates else 0)
        pseudonym = self.pseudonym(patient_id)
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        out.PatientIdentityRemoved = "YES"
        methods = list(METHOD if self.policy.retain_dates else METHOD[:1])
        codes = [BASIC_PROFILE_CODE] + ([MODIFIED_DATES_CODE] if self.policy.retain_dates else [])
        csa = safe_csa_header(ds) if is_mosaic(ds) else None
        if csa is not None:
            out.private_block(0x0029, CSA_CREATOR, create=True).add_new(0x10, "OB", csa)
            methods.append(SAFE_PRIVATE_METHOD)
            codes.append(SAFE_PRIVATE_CODE)
        out.DeidentificationMethod = methods
        out.DeidentificationMethodCodeSequence = Sequence([_code(*c) for c in codes])
        out.LongitudinalTemporalInformationModified = "MODIFIED" if self.policy.retain_dates else "REMOVED"
        out.file_meta = self._meta(getattr(ds, "file_meta", None), out)
        return out

    def _walk(self, src: Dataset, dst: Dataset, shift: int) -> None:
        for tag in list(src.keys()):  # tags only: what is dropped is never decoded
            if tag.is_private or tag.element == 0:  # private attributes, group lengths
                continue
            rule = _rule_for(int(tag))
            action = "K" if rule is None else (
                "C" if shift and rule.modified_dates == "C" else rule.chosen)
            if action != "X":
                dst.add(self._act(src[tag], action, shift))

    def _act(self, elem: DataElement, action: str, shift: int) -> DataElement:
        if elem.VR == "SQ":
            if action == "Z":
                return DataElement(elem.tag, "SQ", Sequence())
            items = []
            for item in elem.value:  # K, D, U, C: keep the structure, de-identify what it holds
                child = Dataset()
                self._walk(item, child, shift)
                items.append(child)
            return DataElement(elem.tag, "SQ", Sequence(items))
        if action == "K":
            return DataElement(elem.tag, elem.VR, elem.value)
        if action == "Z" or elem.value in (None, "", b""):
            return DataElement(elem.tag, elem.VR, None)
        if action == "U" or (action == "D" and elem.VR == "UI"):
            return DataElement(elem.tag, elem.VR, _map_values(elem.value, self.uid))
        if action == "C":
            if elem.VR == "DA":
                return DataElement(elem.tag, "DA", _map_values(elem.value, lambda v: _shift_date(v, shift)))
            if elem.VR == "DT":
                return DataElement(elem.tag, "DT", _map_values(elem.value, lambda v: _shift_datetime(v, shift)))
            return DataElement(elem.tag, elem.VR, elem.value)  # times keep their value
        return DataElement(elem.tag, elem.VR, _dummy(elem.VR))

    def _meta(self, meta: FileMetaDataset | None, ds: Dataset) -> FileMetaDataset:
        out = FileMetaDataset()
        if meta is not None:
            for elem in meta:
                if (elem.tag.group, elem.tag.element) in _META_KEEP:
                    out.add(DataElement(elem.tag, elem.VR, elem.value))
        out.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
        out.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
        out.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        return out


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dummy(vr: str) -> object:
    return DUMMY_BY_VR.get(vr, DUMMY_TEXT if vr in {"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "UR"} else b"\x00\x00")


def _map_values(value: object, fn) -> object:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [fn(str(v)) for v in value]
    return fn(str(value))


def _shift_date(value: str, days: int) -> str:
    text = value.strip()
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return DUMMY_BY_VR["DA"]  # an unreadable date is not kept
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d")


def _shift_datetime(value: str, days: int) -> str:
    text = value.strip()
    if len(text) < 8:
        return DUMMY_BY_VR["DT"]
    return _shift_date(text[:8], days) + text[8:]


#: One secret per project (hex), made on first use: it keys the pseudonyms and UIDs of de-identified DICOM.
DEID_KEYS = "auth/deid-keys/"


def deid_policy(root: ObjectStore, name: str) -> DeidPolicy:
    """The project's DICOM de-identification: its key (created on first use; concurrent first uses
    agree through create-if-absent) and its options."""
    project = Projects(root).get(name)
    key = f"{DEID_KEYS}{name}.key"
    root.put_if_absent(key, secrets.token_hex(32).encode(), content_type="text/plain")
    secret = bytes.fromhex(root.get_bytes(key).decode().strip())
    return DeidPolicy(secret, retain_dates=project.dicom.retain_dates, allow_burned_in=project.dicom.allow_burned_in)
