"""The header walker of :mod:`medsynth.dicom.elements` reads what pydicom reads: the same elements, raw
values and encodings as ``pydicom.dcmread(..., specific_tags=...)``, for every layout it walks; and None
(so that pydicom reads them) for those it does not. With the fast native pixel path, the pixels are
pydicom's too."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import PYDICOM_ENCODED, mosaic_series, phantom, write_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         generate_uid)

from medsynth.dicom.elements import read_selected
from medsynth.dicom.series import GEOMETRY_TAGS, Header, _native_pixels, assemble_series, read_instance

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dcm_qa_nih" / "In"
NO_SHARED = "../shared/data/dcm_qa_nih is not on this machine (only in the dev/CI tree)"


def assert_same(ours: Dataset, ref: Dataset, where: str = "") -> None:
    """Element for element: tags, VRs, values (sequences item by item), and the encodings read."""
    assert sorted(ours.keys()) == sorted(ref.keys()), where
    for tag in ref.keys():
        a, b = ours[tag], ref[tag]
        assert a.VR == b.VR, (where, tag)
        if b.VR == "SQ":
            assert len(a.value) == len(b.value), (where, tag)
            for k, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                assert_same(x, y, f"{where} {tag}[{k}]")
        else:
            assert a.value == b.value, (where, tag)
    assert ours.original_encoding == ref.original_encoding, where
    assert ours.original_character_set == ref.original_character_set, where


def check(data: bytes, tags) -> Dataset:
    ours = read_selected(data, tags)
    assert ours is not None, "walkable bytes fell back to pydicom"
    ref = pydicom.dcmread(io.BytesIO(data), specific_tags=tags)
    assert_same(ours, ref)
    assert_same(ours.file_meta, ref.file_meta, "file meta")
    assert ours.preamble == ref.preamble
    return ours


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def everything(data: bytes) -> list:
    return list(pydicom.dcmread(io.BytesIO(data)).keys())


def _instance() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "P1", "MR"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [1, 2, 3], [1, 0, 0, 0, 1, 0], [0.5, 0.5]
    ds.SliceThickness = ""  # empty DS: pydicom's raw empty value is None
    ds.SeriesDescription = ""  # empty text
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = np.arange(4, dtype=np.uint16).tobytes()
    return ds


def _with_sequences(undefined: bool) -> Dataset:
    """Sequences before and after the geometry, nested, empty, of defined or undefined lengths (items too)."""
    ds = _instance()
    inner = Dataset()
    inner.ImagePositionPatient = [9, 9, 9]  # the same tag as a top-level one, nested: not the one to find
    inner.CodeMeaning = "x"
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.AnatomicRegionSequence = Sequence([])
    frame = Dataset()
    frame.PlanePositionSequence = Sequence([Dataset()])
    frame.PlanePositionSequence[0].ImagePositionPatient = [4, 5, 6]
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])
    for seq in (ds.ReferencedImageSequence, item.PurposeOfReferenceCodeSequence, ds.AnatomicRegionSequence,
                ds.PerFrameFunctionalGroupsSequence, frame.PlanePositionSequence):
        seq.is_undefined_length = undefined
        for x in seq:
            x.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined-lengths", "undefined-lengths"])
def test_the_walker_reads_what_pydicom_reads(syntax: str, undefined: bool) -> None:
    data = encode(_with_sequences(undefined), syntax)
    ours = check(data, GEOMETRY_TAGS)
    assert [float(v) for v in ours.ImagePositionPatient] == [1, 2, 3]
    check(data, everything(data))  # sequences kept too: pydicom parses their raw bytes when first read
    check(data, ["PatientID", 0x00081140, Tag(0x7FE00010)])  # keywords and tags, as pydicom takes them


@pytest.mark.parametrize("charset", ["", "ISO_IR 192", "\\ISO 2022 IR 100"], ids=["empty", "utf8", "multi"])
def test_the_character_set_is_pydicom_s(charset: str) -> None:
    ds = _instance()
    ds.SpecificCharacterSet = charset
    check(encode(ds), GEOMETRY_TAGS)
    del ds.SpecificCharacterSet
    check(encode(ds), GEOMETRY_TAGS)


@pytest.mark.parametrize("syntax", sorted(PYDICOM_ENCODED))
def test_encapsulated_pixel_data_is_read_whole(tmp_path: Path, syntax: str) -> None:
    image, affine = phantom(shape=(40, 36, 2))  # OpenJPEG needs a few dozen pixels a side
    (first, *_) = write_series(tmp_path, image, affine, syntax=syntax)
    data = first.read_bytes()
    ours = check(data, GEOMETRY_TAGS)
    assert np.array_equal(ours.pixel_array, pydicom.dcmread(first).pixel_array)


def test_private_undefined_length_sequences_in_implicit_vr_are_walked() -> None:
    ds = _instance()
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    nested = Dataset()
    nested.PatientID = "hidden"
    block.add_new(0x01, "SQ", Sequence([nested]))
    block[0x01].value.is_undefined_length = True
    data = encode(ds, ImplicitVRLittleEndian)
    check(data, GEOMETRY_TAGS)
    check(data, everything(data))


def test_what_it_does_not_walk_is_left_to_pydicom(tmp_path: Path) -> None:
    ds = _instance()
    assert read_selected(encode(ds, DeflatedExplicitVRLittleEndian), GEOMETRY_TAGS) is None
    big = encode(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=False)
    assert read_selected(buffer.getvalue(), GEOMETRY_TAGS) is None
    assert read_selected(big[132:], GEOMETRY_TAGS) is None  # no preamble and DICM prefix
    assert read_selected(big[:-3], GEOMETRY_TAGS) is None  # truncated: pydicom keeps the short value
    bad_vr = big.replace(b"PN", b"P\x01", 1)
    assert bad_vr != big and read_selected(bad_vr, GEOMETRY_TAGS) is None
    meta_only = big[:big.index(b"\x08\x00\x05\x00")]
    assert read_selected(meta_only, GEOMETRY_TAGS) is None
    # read_instance falls back to pydicom for all of them: a deflated series still assembles
    image, affine = phantom(shape=(6, 5, 3))
    files = write_series(tmp_path / "deflate", image, affine, syntax="deflate")
    fast = assemble_series([(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in files], max_voxels=10**6)
    full = assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in files], max_voxels=10**6)
    assert np.array_equal(fast.image, full.image)


def test_mosaics_keep_their_csa_header() -> None:
    image, affine = phantom(shape=(6, 5, 4))
    (mosaic,) = mosaic_series(image, affine)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        check(encode(mosaic, syntax), GEOMETRY_TAGS)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("frames", [1, 3])
def test_native_pixels_are_pydicom_s_with_unused_bits_set(signed: bool, frames: int) -> None:
    """12 of 16 bits stored, the 4 above them holding junk: pydicom clears (or sign-extends) them."""
    rng = np.random.default_rng(frames)
    ds = _instance()
    ds.Rows, ds.Columns, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 3, 4, 12, 11, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 2**16, frames * 12, dtype=np.uint16).tobytes()
    data = encode(ds)
    ours = read_instance(data, "x.dcm", geometry_only=True)
    pixels = _native_pixels(ours, Header.of(ours, "x.dcm"))
    ref = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert pixels.dtype == ref.dtype and pixels.shape == ref.shape and np.array_equal(pixels, ref)


@pytest.mark.skipif(not SHARED.is_dir(), reason=NO_SHARED)
@pytest.mark.parametrize("study", ["20180918GE", "20180918Si"])
def test_dcm_qa_nih_files_read_as_pydicom_reads_them(study: str) -> None:
    for f in sorted((SHARED / study).glob("*/*.dcm")):
        data = f.read_bytes()
        ours = check(data, GEOMETRY_TAGS)
        assert np.array_equal(_native_pixels(ours, Header.of(ours, f.name)), pydicom.dcmread(f).pixel_array)
    check(data, everything(data))
