"""Validation and canonicalisation of uploaded NIfTI bytes: good scans come out RAS, bad ones are named."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from medsynth.core.errors import InvalidInput, TooLarge
from medsynth.io.nifti import CanonicalScan, load_nifti, to_nifti_bytes, validate_scan
from medsynth.datasets.phantoms import make_phantom

MAX_VOXELS = 10**6
LPS = np.diag([-1.0, -1.0, 2.5, 1.0])


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None, *, gz: bool = True, version: int = 1) -> bytes:
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    raw = image_class(array, np.eye(4) if affine is None else affine).to_bytes()
    return gzip.compress(raw) if gz else raw


def sform_only_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A file whose sform is ``affine`` even where nibabel could not build a qform from it."""
    img = nib.Nifti1Image(array, np.eye(4))
    img.set_sform(affine, code=1)
    img.set_qform(None, code=0)
    return img.to_bytes()


def with_header(data: bytes, **fields) -> bytes:
    """NIfTI-1 ``data`` (uncompressed) with raw header fields set as given (``pixdim={2: 0.0}`` sets one
    element), bypassing nibabel, which would repair them when it writes."""
    header = nib.Nifti1Header(binaryblock=data[:348], check=False)
    for name, value in fields.items():
        if isinstance(value, dict):
            for index, element in value.items():
                header[name][index] = element
        else:
            header[name] = value
    return header.binaryblock + data[348:]


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_phantom(seed=1, shape=(24, 24, 12))


def check(image: bytes, label: bytes | None = None, *, max_voxels: int = MAX_VOXELS) -> CanonicalScan:
    return validate_scan(image, label, max_voxels=max_voxels)


# --- good input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["nii.gz", "nii"])
def test_ras_phantom_is_accepted_unchanged(phantom, gz: bool) -> None:
    image, label, affine = phantom
    scan = check(nifti_bytes(image, affine, gz=gz), nifti_bytes(label, affine, gz=gz))
    assert scan.image.dtype == np.float32 and scan.label is not None and scan.label.dtype == np.uint8
    np.testing.assert_array_equal(scan.image, image)
    np.testing.assert_array_equal(scan.label, label)
    np.testing.assert_allclose(scan.affine, affine)
    assert scan.shape == (24, 24, 12) and scan.spacing == (1.0, 1.0, 2.5)
    assert scan.orientation == "RAS" and scan.label_values == (0, 1, 2)


def _same_world_voxel(scan: CanonicalScan, affine: np.ndarray, index: tuple[int, ...]) -> tuple[int, ...]:
    """The canonical index of the voxel stored at ``index`` under ``affine`` (same world position)."""
    world = affine @ [*index, 1.0]
    canonical = np.linalg.solve(scan.affine, world)[:3]
    np.testing.assert_allclose(canonical, np.round(canonical), atol=1e-6)
    return tuple(int(i) for i in np.round(canonical))


def test_lps_scan_is_flipped_to_ras(phantom) -> None:
    image, label, _ = phantom
    scan = check(nifti_bytes(image, LPS), nifti_bytes(label, LPS))
    assert scan.orientation == "RAS" and nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(scan.image, image[::-1, ::-1, :])
    np.testing.assert_array_equal(scan.label, label[::-1, ::-1, :])
    voxel = (2, 5, 7)
    moved = _same_world_voxel(scan, LPS, voxel)
    assert moved == (21, 18, 7)
    assert scan.image[moved] == image[voxel] and scan.label[moved] == label[voxel]
    assert scan.spacing == (1.0, 1.0, 2.5)


def test_swapped_axes_are_transposed_to_ras(phantom) -> None:
    image, _, _ = phantom
    ars = np.array([[0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]])  # axis 0 runs anterior
    scan = check(nifti_bytes(image, ars))
    np.testing.assert_array_equal(scan.image, image.transpose(1, 0, 2))
    assert scan.orientation == "RAS" and scan.spacing == (1.0, 2.0, 2.5)
    voxel = (3, 11, 4)
    assert scan.image[_same_world_voxel(scan, ars, voxel)] == image[voxel]


def test_nifti2_is_accepted(phantom) -> None:
    image, label, affine = phantom
    scan = check(nifti_bytes(image, affine, version=2), nifti_bytes(label, affine, version=2, gz=False))
    np.testing.assert_array_equal(scan.image, image)
    assert scan.label_values == (0, 1, 2)


@pytest.mark.parametrize("stored", ["2d", "3d-singleton", "4d-singletons"])
def test_2d_image_is_accepted(phantom, stored: str) -> None:
    image, label, affine = phantom
    plane, plane_label = image[:, :, 5], label[:, :, 5]
    extra = {"2d": (), "3d-singleton": (1,), "4d-singletons": (1, 1)}[stored]
    scan = check(nifti_bytes(plane.reshape(*plane.shape, *extra), affine, gz=False), nifti_bytes(plane_label, affine))
    assert scan.shape == (24, 24) and scan.spacing == (1.0, 1.0) and scan.orientation == "RAS"
    np.testing.assert_array_equal(scan.image, plane)
    np.testing.assert_array_equal(scan.label, plane_label)


def test_2d_flipped_and_zero_slice_column_is_canonicalised(phantom) -> None:
    image, _, _ = phantom
    plane = image[:, :, 5]
    flipped = np.diag([-0.5, 0.7, 0.0, 1.0])  # in-plane flip, no slice column (sform only)
    scan = check(sform_only_bytes(plane, flipped))
    np.testing.assert_array_equal(scan.image, plane[::-1, :])
    assert scan.orientation == "RAS" and scan.spacing == pytest.approx((0.5, 0.7))
    written = load_nifti(to_nifti_bytes(scan.image, scan.affine), what="canonical", max_voxels=MAX_VOXELS)
    np.testing.assert_allclose(written.affine[:3, :2], scan.affine[:3, :2])


def test_4d_with_a_single_volume_is_read_as_3d(phantom) -> None:
    image, _, affine = phantom
    scan = check(nifti_bytes(image[..., np.newaxis], affine))
    assert scan.shape == (24, 24, 12)


@pytest.mark.parametrize("stored", ["bytes", "file"])
def test_a_4d_image_is_a_time_series_that_the_project_option_decides(phantom, tmp_path, stored: str) -> None:
    """NIfTI's fourth axis is time: 'first' keeps time point 0 (with a label map on the spatial grid);
    'refuse' and 'split' (one upload makes one scan) refuse it, saying so and that channels (a Decathlon
    multi-modal image) are not supported either."""
    image, label, affine = phantom
    series = np.stack([image, image * 2, image * 3], axis=-1)
    data = nifti_bytes(series, LPS)
    source = data
    if stored == "file":
        source = tmp_path / "bold.nii.gz"
        source.write_bytes(data)
    scan = validate_scan(source, nifti_bytes(label, LPS), max_voxels=MAX_VOXELS, time_series="first")
    expected = validate_scan(nifti_bytes(image, LPS), nifti_bytes(label, LPS), max_voxels=MAX_VOXELS)
    assert scan.shape == (24, 24, 12) and np.array_equal(scan.image, expected.image) and np.array_equal(scan.label, expected.label)
    assert np.allclose(scan.affine, expected.affine)
    for option, why in (("refuse", "which this project refuses"), ("split", "which one NIfTI upload cannot split into scans")):
        with pytest.raises(InvalidInput, match=rf"a 4D NIfTI is a time series \(3 time points: its fourth axis is time\), {why}.*"
                                                r"channels \(Decathlon multi-modal images\) are not supported"):
            validate_scan(data, None, max_voxels=MAX_VOXELS, time_series=option)
    with pytest.raises(InvalidInput, match="label map must be 2D or 3D"):
        validate_scan(data, nifti_bytes(series.astype(np.uint8), LPS), max_voxels=MAX_VOXELS, time_series="first")
    with pytest.raises(InvalidInput, match=r"image must be 2D or 3D, got shape \(24, 24, 12, 3, 2\)"):
        validate_scan(nifti_bytes(np.stack([series, series], axis=-1), LPS), None, max_voxels=MAX_VOXELS, time_series="first")


def test_label_dtype_follows_its_largest_value(phantom) -> None:
    image, label, affine = phantom
    big = label.astype(np.int32) * 150  # 0, 150, 300
    scan = check(nifti_bytes(image, affine), nifti_bytes(big, affine))
    assert scan.label is not None and scan.label.dtype == np.int16 and scan.label_values == (0, 150, 300)
    floats = check(nifti_bytes(image, affine), nifti_bytes(label.astype(np.float64), affine))
    assert floats.label is not None and floats.label.dtype == np.uint8


def test_integer_image_becomes_float32(phantom) -> None:
    image, _, affine = phantom
    scan = check(nifti_bytes(np.round(image).astype(np.int16), affine))
    assert scan.image.dtype == np.float32 and scan.label is None and scan.label_values == ()


def test_canonical_bytes_round_trip(phantom) -> None:
    image, label, _ = phantom
    scan = check(nifti_bytes(image, LPS), nifti_bytes(label, LPS))
    assert scan.label is not None
    data = to_nifti_bytes(scan.image, scan.affine)
    assert data[:2] == b"\x1f\x8b" and data == to_nifti_bytes(scan.image, scan.affine)  # deterministic
    again = check(data, to_nifti_bytes(scan.label, scan.affine))
    np.testing.assert_array_equal(again.image, scan.image)
    np.testing.assert_array_equal(again.label, scan.label)
    np.testing.assert_allclose(again.affine, scan.affine)
    stored = nib.Nifti1Image.from_bytes(gzip.decompress(to_nifti_bytes(scan.label, scan.affine)))
    assert stored.get_data_dtype() == np.uint8 and stored.header["sform_code"] == 1


def test_load_nifti_reads_both_containers(phantom) -> None:
    image, _, affine = phantom
    for gz in (True, False):
        img = load_nifti(nifti_bytes(image, affine, gz=gz), what="scan", max_voxels=MAX_VOXELS)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), image)
        np.testing.assert_allclose(img.affine, affine)


# --- bad input -----------------------------------------------------------------------------------


def _bad_inputs(phantom) -> dict[str, tuple[bytes, bytes | None, str]]:
    image, label, affine = phantom
    good = nifti_bytes(image, affine)
    nan, inf = image.copy(), image.copy()
    nan[3, 3, 3] = np.nan
    inf[1, 2, 3], inf[4, 5, 6] = np.inf, -np.inf
    half = label.astype(np.float32)
    half[5, 5, 5] = 0.5
    negative = label.astype(np.int16)
    negative[5, 5, 5] = -1
    label_nan = label.astype(np.float32)
    label_nan[0, 0, 0] = np.nan
    shifted = affine.copy()
    shifted[0, 3] += 10
    zero_spacing = affine.copy()
    zero_spacing[1, 1] = 0.0
    plain = nifti_bytes(image, affine, gz=False)
    return {
        "random bytes": (b"this is not a nifti file at all" * 20, None, "image is not a readable NIfTI file: no NIfTI-1 or NIfTI-2 header"),
        "empty file": (b"", None, "image is not a readable NIfTI file: 0 bytes"),
        "truncated .nii.gz": (good[: len(good) // 2], None, "image is not a readable NIfTI file: the gzip stream is truncated"),
        "truncated .nii": (plain[: len(plain) - 100], None, "image is not a readable NIfTI file"),
        "corrupt gzip": (b"\x1f\x8b not really gzip", None, "image is not a readable NIfTI file: corrupt gzip"),
        "bad label file": (good, b"\x00" * 400, "label map is not a readable NIfTI file"),
        "4D": (nifti_bytes(np.zeros((4, 4, 4, 3), np.float32), affine), None, "image must be 2D or 3D, got shape (4, 4, 4, 3)"),
        "5D": (nifti_bytes(np.zeros((4, 4, 4, 1, 2), np.float32)), None, "image must be 2D or 3D, got shape (4, 4, 4, 1, 2)"),
        "1D": (nifti_bytes(np.zeros((16,), np.float32)), None, "image must be 2D or 3D, got shape (16,)"),
        "4D label": (good, nifti_bytes(np.zeros((24, 24, 12, 2), np.uint8), affine), "label map must be 2D or 3D"),
        "complex": (nifti_bytes(np.zeros((4, 4, 4), np.complex64)), None, "image must hold real numbers, got data type complex64"),
        "NaN voxels": (nifti_bytes(nan, affine), None, "image must contain only finite values, got 1 NaN voxel."),
        "inf voxels": (nifti_bytes(inf, affine), None, "image must contain only finite values, got 2 inf voxels."),
        "float64 overflow": (nifti_bytes(image.astype(np.float64) * 1e300, affine), None, "after conversion to float32"),
        "non-integer labels": (good, nifti_bytes(half, affine), "label map must contain integer values, got 0.5 at voxel (5, 5, 5)"),
        "negative labels": (good, nifti_bytes(negative, affine), "label map values must be non-negative, got minimum -1"),
        "NaN labels": (good, nifti_bytes(label_nan, affine), "label map must contain only finite values, got 1 NaN voxel"),
        "shape mismatch": (good, nifti_bytes(label[:, :, :-2], affine), "label map must have the image's shape (24, 24, 12), got (24, 24, 10)"),
        "affine mismatch": (good, nifti_bytes(label, shifted), "label map must have the image's affine"),
        "zero spacing": (sform_only_bytes(image, zero_spacing), None, "image voxel spacing must be positive, got (1.0, 0.0, 2.5)"),
        "zero-length axis": (with_header(plain, dim=[3, 24, 0, 12, 1, 1, 1, 1]), None,
                             "image has a zero-length axis: its header's dim declares shape (24, 0, 12)"),
        "zero pixdim": (with_header(plain, pixdim={2: 0.0}, qform_code=0, sform_code=0), None,
                        "image header pixdim[2] must be a positive, finite voxel size (sform_code and qform_code are 0: "
                        "pixdim places the voxels), got 0.0"),
        "negative pixdim": (with_header(plain, pixdim={1: -1.5}, qform_code=0, sform_code=0), None, "pixdim[1] must be a positive, "
                            "finite voxel size (sform_code and qform_code are 0: pixdim places the voxels), got -1.5"),
        "NaN pixdim": (with_header(plain, pixdim={3: np.nan}, qform_code=0, sform_code=0), None, "pixdim[3] must be a positive, "
                       "finite voxel size (sform_code and qform_code are 0: pixdim places the voxels), got nan"),
        "zero pixdim under a qform": (with_header(plain, pixdim={1: 0.0}, qform_code=1, sform_code=0), None, "pixdim[1] must be a positive, "
                                      "finite voxel size (sform_code is 0: the qform places the voxels), got 0.0"),
        "zero pixdim in the label map": (good, with_header(nifti_bytes(label, affine, gz=False), pixdim={1: 0.0}, qform_code=0,
                                                           sform_code=0), "label map header pixdim[1] must be"),
    }


BAD_CASES = list(_bad_inputs(make_phantom(seed=1, shape=(24, 24, 12))))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_rejected_with_a_message_naming_it(phantom, case: str) -> None:
    image, label, needle = _bad_inputs(phantom)[case]
    with pytest.raises(InvalidInput) as caught:
        check(image, label)
    assert not isinstance(caught.value, TooLarge)
    assert needle in str(caught.value), (case, str(caught.value))


def test_pixdim_is_checked_only_where_it_places_the_voxels(phantom) -> None:
    """An sform overrides pixdim; a 2D image's third pixdim (often 0) sizes no axis of the scan."""
    image, _, affine = phantom
    under_sform = with_header(nifti_bytes(image, affine, gz=False), pixdim={1: 0.0, 2: 0.0, 3: 0.0}, qform_code=0)
    assert check(under_sform).spacing == pytest.approx(tuple(float(abs(x)) for x in np.diag(affine)[:3]))
    flat = with_header(nifti_bytes(image[:, :, :1], np.eye(4), gz=False), pixdim={1: 0.8, 2: 0.7, 3: 0.0}, qform_code=0, sform_code=0)
    assert check(flat).spacing == pytest.approx((0.8, 0.7))


def test_affine_mismatch_reports_both_affines(phantom) -> None:
    image, label, affine = phantom
    shifted = affine.copy()
    shifted[0, 3] += 10
    with pytest.raises(InvalidInput) as caught:
        check(nifti_bytes(image, affine), nifti_bytes(label, shifted))
    assert "-11.5" in str(caught.value) and "-1.5" in str(caught.value)


def test_affine_within_tolerance_is_accepted(phantom) -> None:
    image, label, affine = phantom
    nudged = affine.copy()
    nudged[:3, 3] += 1e-4
    assert check(nifti_bytes(image, affine), nifti_bytes(label, nudged)).label_values == (0, 1, 2)


@pytest.mark.parametrize("gz", [True, False], ids=["nii.gz", "nii"])
def test_too_many_voxels(phantom, gz: bool) -> None:
    image, label, affine = phantom
    with pytest.raises(TooLarge, match=r"image has 6912 voxels \(shape \(24, 24, 12\)\), more than the limit of 1000"):
        check(nifti_bytes(image, affine, gz=gz), max_voxels=1000)
    small = nifti_bytes(image[:10, :10, :10], affine)
    with pytest.raises(TooLarge, match="label map has 6912 voxels"):
        check(small, nifti_bytes(label, affine), max_voxels=1000)


def test_voxel_limit_is_checked_from_the_header_before_reading_data(phantom) -> None:
    image, _, affine = phantom
    header_only = nifti_bytes(image, affine, gz=False)[:352]  # declares 6912 voxels, holds none
    with pytest.raises(TooLarge, match="6912 voxels"):
        load_nifti(header_only, what="scan", max_voxels=1000)
    with pytest.raises(TooLarge, match="6912 voxels"):
        load_nifti(gzip.compress(header_only), what="scan", max_voxels=1000)
    with pytest.raises(InvalidInput, match="scan is not a readable NIfTI file"):
        load_nifti(header_only, what="scan", max_voxels=MAX_VOXELS)


def _gzip_of_zeros_after(prefix: bytes, total: int) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 22)
    parts = [packer.compress(prefix)]
    parts += [packer.compress(zeros) for _ in range(total // len(zeros))]
    return b"".join(parts) + packer.flush()


def test_gzip_bomb_is_stopped_early() -> None:
    header = nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)  # declares 608 bytes in all
    bomb = _gzip_of_zeros_after(header, 200 << 20)  # ... then inflates to 200 MB
    assert len(bomb) < 1 << 20
    with pytest.raises(TooLarge, match="image decompresses to more than .* bytes, beyond the 608 bytes its NIfTI header declares"):
        check(bomb)


def test_multi_member_gzip_bomb_is_stopped_too() -> None:
    header = nifti_bytes(np.zeros((4, 4, 4), np.float32), gz=False)
    member = gzip.compress(bytes(1 << 20), compresslevel=1)
    with pytest.raises(TooLarge, match="decompresses to more than"):
        check(gzip.compress(header) + member * 200)


def test_multi_member_gzip_is_read(phantom) -> None:
    image, _, affine = phantom
    raw = nifti_bytes(image, affine, gz=False)
    split = len(raw) // 3
    scan = check(gzip.compress(raw[:split]) + gzip.compress(raw[split:]))
    np.testing.assert_array_equal(scan.image, image)


def test_huge_extension_offset_cannot_lift_the_gzip_cap() -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    raw = bytearray(img.to_bytes())
    header = nib.Nifti1Header(binaryblock=bytes(raw[:348]))
    header["vox_offset"] = 1e12
    raw[:348] = header.binaryblock
    with pytest.raises(TooLarge, match="header extensions"):
        check(gzip.compress(bytes(raw)))
