"""Synthetic samples as DICOM: an image of the source modality plus its mask as a DICOM-SEG (highdicom)
referencing it, each with an identity no one could take for a real patient's.

Every sample is its own synthetic subject: PatientName ``SYNTHETIC^<cohort>``, PatientID
``SYN-<cohort>-<index>``, fresh UIDs (study, series, instance, frame of reference), ImageType
``DERIVED\\SECONDARY\\SYNTHETIC``, a SeriesDescription and DerivationDescription naming the generator and
the cohort, BurnedInAnnotation ``NO``, and nothing from the training data's headers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medsynth.dicom.write import SeriesIdentity, series_from_volume
from medsynth.io.geometry import SliceGeometry, slice_affine

SEG_MANUFACTURER = "medsynth"
SUPPORTED_MODALITIES = ("MR", "CT")


@dataclass(frozen=True)
class CohortIdentity:
    """What every DICOM file of one cohort says about where it came from."""

    cohort_id: str
    generator_id: str
    family: str
    modality: str = "MR"
    label_names: tuple[tuple[int, str], ...] = ()  # class value → name, where the training data had names
    software_version: str = ""

    def patient_id(self, index: int) -> str:
        return f"SYN-{self.cohort_id[:12]}-{index:05d}"

    @property
    def patient_name(self) -> str:
        return f"SYNTHETIC^{self.cohort_id[:48]}"

    @property
    def description(self) -> str:
        return f"SYNTHETIC {self.family} {self.generator_id[:12]} cohort {self.cohort_id[:12]}"[:64]


def sample_files(image: np.ndarray, mask: np.ndarray, index: int, who: CohortIdentity,
                 geometry: SliceGeometry | None = None) -> tuple[bytes, bytes]:
    """One sample (image ``(1, S, S)`` float, mask ``(S, S)`` class ids) as DICOM Part 10 bytes: the
    image instance and a DICOM-SEG of its mask that references it, both placed by ``geometry`` (the
    cohort's: PixelSpacing, ImageOrientationPatient in LPS, SliceThickness; None: the identity)."""
    modality = who.modality if who.modality in SUPPORTED_MODALITIES else "MR"
    now = datetime.now(timezone.utc)
    identity = SeriesIdentity(
        who.patient_id(index), who.patient_name, series_description=who.description, series_number=1, modality=modality,
        image_type=("DERIVED", "SECONDARY", "SYNTHETIC"), manufacturer=SEG_MANUFACTURER,
        study_date=now.strftime("%Y%m%d"), study_time=now.strftime("%H%M%S"), study_id="SYNTH",  # when it was made
        extra={"BurnedInAnnotation": "NO", "ContentLabel": "SYNTHETIC",
               "DerivationDescription": f"Synthetic image sampled by medsynth generator {who.generator_id} "
                                        f"(family {who.family}), sample {index} of cohort {who.cohort_id}; no real patient."},
    )
    (instance,) = series_from_volume(np.asarray(image[0], dtype=np.float32), slice_affine(geometry), identity)
    return _bytes(instance), _bytes(_segmentation(instance, np.asarray(mask, dtype=np.uint8), who))


def _segmentation(source: Dataset, mask: np.ndarray, who: CohortIdentity):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = dict(who.label_names)
    present = sorted(int(v) for v in np.unique(mask) if v)
    count = max(present, default=0)
    numbers = list(range(1, max(count, 1) + 1))  # segments 1..max class, each described even if absent here
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=names.get(n, f"class {n}")[:64], segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name=f"medsynth {who.family}", version=who.software_version or "1",
                                                                     family=codes.DCM.ArtificialIntelligence))
        for n in numbers]
    pixels = mask.T[np.newaxis]  # our (column, row) array -> (frames, rows, columns)
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=SEG_MANUFACTURER, manufacturer_model_name=f"medsynth {who.family}",
        software_versions=who.software_version or "1", device_serial_number="0", content_label="SYNTHETIC",
        content_description=who.description, omit_empty_frames=False,
    )


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
