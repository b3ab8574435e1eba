"""Test series: phantom volumes written as DICOM with pydicom (and dcmtk for JPEG), and the external
converters they are checked against (dcm2niix, dcmtk). The tools are Debian packages `.ci/run` installs."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless)

from medsynth.dicom.series import assemble_series, read_instance
from medsynth.dicom.write import SeriesIdentity, series_from_volume
from medsynth.io.nifti import CanonicalScan, canonicalise

# How each transfer syntax is made: pydicom's own encoders, or a dcmtk command applied to the file.
PYDICOM_ENCODED = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}
DCMTK_ENCODED = {"jpeg-lossless": ["dcmcjpeg", "--encode-lossless-sv1"], "jpeg-baseline": ["dcmcjpeg", "--encode-baseline"]}
PLAIN = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "deflate": DeflatedExplicitVRLittleEndian}
# dcm2niix (Debian's build) reads neither of these; they are decoded by dcmtk first, then converted.
DCMTK_DECODE = {"deflate": ["dcmconv", "+te"], "jpeg-ls": ["dcmdjpls"]}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian packages dcmtk and dcm2niix; .ci/run installs them)"
    return path


def phantom(shape=(40, 36, 7), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An integer volume and an oblique, anisotropic RAS affine."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 3000, shape).astype(np.float32)
    q, _ = np.linalg.qr(np.array([[0.1, -1.0, 0.1], [1.0, 0.05, 0.0], [0.0, 0.1, 1.0]]))
    affine = np.eye(4)
    affine[:3, :3] = q * np.array([1.1, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return image, affine


def write_series(folder: Path, image: np.ndarray, affine: np.ndarray, *, syntax: str = "explicit",
                 identity: SeriesIdentity | None = None, edit=None) -> list[Path]:
    """Write ``image`` as one DICOM file per slice in ``syntax``; ``edit(ds, k)`` may change each dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = identity or SeriesIdentity("PID-0001", "Doe^Jane", series_description="phantom")
    paths = []
    for k, ds in enumerate(series_from_volume(image, affine, identity)):
        if edit is not None:
            edit(ds, k)
        if syntax in PYDICOM_ENCODED:
            ds.compress(PYDICOM_ENCODED[syntax])
        else:
            ds.file_meta.TransferSyntaxUID = PLAIN.get(syntax, ExplicitVRLittleEndian)
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if syntax in DCMTK_ENCODED:
            cmd = DCMTK_ENCODED[syntax]
            subprocess.run([tool(cmd[0]), *cmd[1:], str(path), f"{path}.tmp"], check=True, capture_output=True)
            Path(f"{path}.tmp").replace(path)
        paths.append(path)
    return paths


def read_folder(folder: Path, max_voxels: int = 10**8) -> CanonicalScan:
    files = sorted(Path(folder).glob("*.dcm"))
    return assemble_series([(f.name, read_instance(f.read_bytes(), f.name)) for f in files], max_voxels=max_voxels)


def dcm2niix(folder: Path, out: Path) -> CanonicalScan:
    """Convert ``folder`` with dcm2niix and canonicalise its NIfTI (orientation only; voxels untouched)."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([tool("dcm2niix"), "-b", "n", "-z", "n", "-o", str(out), "-f", "%s", str(folder)],
                            capture_output=True, text=True)
    found = glob.glob(str(out / "*.nii"))
    assert len(found) == 1, f"dcm2niix made {found}: {result.stdout[-2000:]}"
    ref = nib.load(found[0])
    return canonicalise(np.asarray(ref.dataobj, dtype=np.float32), np.asarray(ref.affine, dtype=np.float64))


def dcmtk_decoded(folder: Path, out: Path, syntax: str) -> Path:
    """``folder`` decompressed by dcmtk, for the syntaxes dcm2niix cannot read itself."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = DCMTK_DECODE[syntax]
    for f in sorted(folder.glob("*.dcm")):
        subprocess.run([tool(cmd[0]), *cmd[1:], str(f), str(out / f.name)], check=True, capture_output=True)
    return out


def with_raw_text(data: bytes, keyword: str, text: str) -> bytes:
    """Part 10 ``data`` with the text attribute ``keyword`` holding ``text`` as written, valid or not
    (pydicom refuses to set a malformed DS or IS itself): a placeholder of the right length is set,
    then replaced in the encoded bytes."""
    import io

    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    ds = pydicom.dcmread(io.BytesIO(data))
    tag = tag_for_keyword(keyword)
    parts = text.count("\\") + 1
    placeholder = "\\".join(["9" * max(1, len(text) // parts + 1)] * parts)
    ds[tag] = pydicom.DataElement(tag, dictionary_VR(tag), placeholder)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    encoded, marker = buffer.getvalue(), placeholder.encode()
    assert encoded.count(marker) == 1 and len(text) <= len(marker), (keyword, text)
    return encoded.replace(marker, text.encode().ljust(len(marker)))


def mosaic_series(image: np.ndarray, affine: np.ndarray, *, times: int = 1, csa: bool = True,
                  identity: SeriesIdentity | None = None) -> list:
    """Siemens mosaics of ``image`` (column, row, slice), one per time point (time point ``t`` holds
    ``image + t``), as a Siemens scanner lays them out: the slices tiled row by row in a square grid,
    ImagePositionPatient that of the whole mosaic image, the CSA image header (0029,1010) giving
    NumberOfImagesInMosaic and SliceNormalVector (the direction of the affine's slice axis), and
    SpacingBetweenSlices. ``csa=False`` leaves the CSA header out."""
    import math

    from pydicom.uid import generate_uid

    from medsynth.dicom.mosaic import CSA_CREATOR, write_csa
    from medsynth.dicom.series import LPS_TO_RAS

    identity = identity or SeriesIdentity("PID-0001", "Doe^Jane", series_description="epi mosaic", manufacturer="SIEMENS")
    cols, rows, n = image.shape
    across = math.ceil(math.sqrt(n))
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    col_spacing, row_spacing = float(np.linalg.norm(lps[:3, 0])), float(np.linalg.norm(lps[:3, 1]))
    row_dir, col_dir = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    step = lps[:3, 2]
    out = []
    for t in range(times):
        (ds,) = series_from_volume((image + t)[:, :, :1], affine, identity)  # slice 0's geometry and identity
        stored = np.zeros((rows * across, cols * across), dtype=np.int16)
        for k in range(n):
            top, left = (k // across) * rows, (k % across) * cols
            stored[top:top + rows, left:left + cols] = (image[:, :, k] + t).T
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = t + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.Rows, ds.Columns = rows * across, cols * across
        corner = lps[:3, 3] - row_dir * col_spacing * (cols * across - cols) / 2 - col_dir * row_spacing * (rows * across - rows) / 2
        ds.ImagePositionPatient = [f"{v:.10g}" for v in corner]
        ds.SpacingBetweenSlices = f"{float(np.linalg.norm(step)):.10g}"
        ds.SliceThickness = ds.SpacingBetweenSlices
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = stored.tobytes()
        if csa:
            normal = step / np.linalg.norm(step)
            header = write_csa({"NumberOfImagesInMosaic": ("US", [str(n)]),
                                "SliceNormalVector": ("FD", [repr(float(v)) for v in normal]),
                                "ProtocolSliceNumber": ("IS", ["0"])})
            block = ds.private_block(0x0029, CSA_CREATOR, create=True)
            block.add_new(0x10, "OB", header)
        out.append(ds)
    return out


def write_mosaics(folder: Path, datasets: list) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, ds in enumerate(datasets):
        path = folder / f"{t:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
