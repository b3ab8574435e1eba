"""Volume → DICOM series (single-frame image instances), the inverse of :mod:`medsynth.dicom.series`.

Used for cohorts sent back as DICOM and to make test series. The volume's RAS affine becomes
ImagePositionPatient / ImageOrientationPatient / PixelSpacing (LPS); values are stored as 16-bit
integers with a RescaleSlope/Intercept chosen so that integer-valued volumes are stored exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medsynth.dicom.series import LPS_TO_RAS

SOP_CLASSES = {
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "CT": UID("1.2.840.10008.5.1.4.1.1.2"),
}
SIGNED_RANGE = (-32768, 32767)
# The image modules' type 1 and 2 attributes a written volume cannot know: "research mode", no sequence
# variant, and the type 2 ones present but empty (unknown), so the instances pass dciodvfy.
MODALITY_MODULES: dict[str, dict[str, object]] = {
    "MR": {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "2D",
           "RepetitionTime": "", "EchoTime": "", "EchoTrainLength": "", "PatientPosition": "", "Laterality": ""},
    "CT": {"KVP": "", "AcquisitionNumber": "", "PatientPosition": "", "Laterality": ""},
}


@dataclass
class SeriesIdentity:
    """Who and what a written series says it is."""

    patient_id: str
    patient_name: str
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    series_description: str = ""
    series_number: int = 1
    modality: str = "MR"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    manufacturer: str = ""
    extra: dict[str, object] = field(default_factory=dict)  # keyword → value, set on every instance


def _rescale(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values, slope and intercept reproducing ``image`` (exactly, when it holds integers
    within the int16 range)."""
    finite = image.astype(np.float64)
    low, high = float(finite.min()), float(finite.max())
    if np.array_equal(finite, np.round(finite)) and SIGNED_RANGE[0] <= low and high <= SIGNED_RANGE[1]:
        return finite.astype(np.int16), 1.0, 0.0
    slope = (high - low) / (SIGNED_RANGE[1] - SIGNED_RANGE[0]) if high > low else 1.0
    intercept = low - SIGNED_RANGE[0] * slope
    stored = np.clip(np.round((finite - intercept) / slope), *SIGNED_RANGE).astype(np.int16)
    return stored, slope, intercept


def series_from_volume(image: np.ndarray, affine: np.ndarray, identity: SeriesIdentity) -> list[Dataset]:
    """One instance per slice of a 3D (or 2D) ``image`` whose voxel→RAS mapping is ``affine``."""
    volume = image if image.ndim == 3 else image[..., np.newaxis]
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    col_spacing = float(np.linalg.norm(lps[:3, 0]))
    row_spacing = float(np.linalg.norm(lps[:3, 1]))
    row_dir, col_dir = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    step = lps[:3, 2]
    thickness = float(np.linalg.norm(step))
    stored, slope, intercept = _rescale(volume)
    instances = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_class = SOP_CLASSES.get(identity.modality, SOP_CLASSES["MR"])
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = identity.patient_id, identity.patient_name
        ds.PatientBirthDate, ds.PatientSex = "", ""  # type 2: present, unknown
        ds.StudyDate, ds.StudyTime = identity.study_date, identity.study_time
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = identity.study_id, "", ""
        ds.Manufacturer, ds.PositionReferenceIndicator = identity.manufacturer, ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID = identity.study_uid, identity.series_uid
        ds.FrameOfReferenceUID = identity.frame_of_reference_uid
        ds.Modality = identity.modality
        ds.SeriesNumber, ds.InstanceNumber = identity.series_number, k + 1
        ds.SeriesDescription = identity.series_description
        ds.ImageType = list(identity.image_type)
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * step]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(thickness)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        for keyword, value in MODALITY_MODULES.get(identity.modality, {}).items():
            setattr(ds, keyword, value)
        for keyword, value in identity.extra.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        instances.append(ds)
    return instances


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) as exact as the VR allows."""
    for digits in range(16, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return "0" if text == "-0" else text
    return "0"
