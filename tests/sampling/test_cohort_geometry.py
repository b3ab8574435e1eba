"""Cohorts with real geometry (issue 23, item 6): a view records where its slices' pixels sit in mm
(over its training scans), and a cohort's NIfTI and DICOM files carry it, so that a viewer measures
millimetres; nibabel and pydicom read it back. Cohorts of views made before keep the identity and say so."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.bus.messages import JobKind
from medsynth.commands.build import prepare_dataset_command
from medsynth.commands.requests import PrepareDatasetCreate
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import SamplerBackend, Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import ScanEntry, load_manifest
from medsynth.datasets.phantoms import make_phantom
from medsynth.datasets.views import ViewSpec, ViewSummary, parse_view, view_geometry, view_id_for
from medsynth.dicom.export import CohortIdentity
from medsynth.dicom.series import assemble_series
from medsynth.generators.checkpoint import Checkpoint, save_checkpoint
from medsynth.handlers.prepare import prepare_dataset
from medsynth.io.geometry import PatchGeometry, SliceGeometry, slice_affine
from medsynth.io.nifti import canonicalise
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.sampling.backends import InProcessSampler
from medsynth.sampling.cohort import cohort_geometry, geometry_section, read_manifest, regenerate, sample_nifti_bytes, write_cohort
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2
from sampling_helpers import PROVENANCE, SmallGenerator

WHO = CohortIdentity(cohort_id="c-geometry-0001", generator_id="g-123456789abc", family="joint-gan")
SIZE = 32
# Per patient: the canonical (RAS) shape and spacing (mm). geo_002 is uploaded with its axes stored
# S, L, A (transposed and flipped): the manifest's shape and spacing are those of the canonical copy.
SCANS = {
    "geo_000": ((24, 20, 10), (0.8, 1.2, 3.0)),
    "geo_001": ((20, 28, 10), (0.8, 1.2, 3.0)),
    "geo_002": ((32, 16, 8), (0.8, 1.2, 2.0)),
}
# geo_003 (extreme spacing) joins in the dataset "held": the split puts one patient in test.
HELD_OUT = {"geo_003": ((16, 16, 8), (5.0, 5.0, 9.0))}


@dataclass
class Ctx:
    """What the prepare-dataset and sample-cohort handlers use of their job context."""

    store: ObjectStore
    settings: Settings = field(default_factory=lambda: Settings(inception_weights=None, sampler_backend=SamplerBackend.inprocess,
                                                                device="cpu"))
    job_id: str = field(default_factory=lambda: new_job_id(JobKind.sample_cohort))
    events: list = field(default_factory=list)

    @property
    def records(self) -> JobRecords:
        return JobRecords(self.store)

    @property
    def record(self) -> JobRecord:
        return JobRecord(job_id=self.job_id, kind=JobKind.sample_cohort, spec={}, state=JobState.running)

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def emit(self, event) -> None:
        self.events.append(event)


def _upload(name: str, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[Upload, Upload]:
    """A phantom as NIfTI written here with nibabel: RAS with ``spacing`` on the diagonal, except
    geo_002, stored with its array axes (S, L, A)."""
    image, label, _ = make_phantom(sum(map(ord, name)), shape, spacing)
    affine = np.diag([*spacing, 1.0])
    if name == "geo_002":
        image, label = (np.ascontiguousarray(np.flip(a, 0).transpose(2, 0, 1)) for a in (image, label))
        affine = np.zeros((4, 4))
        affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = spacing[2], -spacing[0], spacing[1], 1.0

    def nifti(array: np.ndarray) -> bytes:
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        return gzip.compress(img.to_bytes())

    return Upload(f"{name}.nii.gz", nifti(image)), Upload(f"{name}.nii.gz", nifti(label))


def _dataset(store: ObjectStore, name: str, scans: dict) -> None:
    for patient, (shape, spacing) in scans.items():
        ingest_scan(store, name, patient, *_upload(patient, shape, spacing), max_voxels=10**6)


def _prepare(store: ObjectStore, dataset: str, **body) -> ViewSummary:
    command = prepare_dataset_command(dataset, PrepareDatasetCreate(size=SIZE, **body), store)
    command = jobs_pb2.PrepareDataset.FromString(command.SerializeToString())  # over the wire, as a worker gets it
    key = prepare_dataset(command, Ctx(store))["view"]
    return parse_view(store.get_json(key), key)


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """Dataset 'geo' (the three SCANS) and 'held' (those and HELD_OUT)."""
    store = LocalStore(tmp_path_factory.mktemp("geometry") / "store")
    _dataset(store, "geo", SCANS)
    _dataset(store, "held", {**SCANS, **HELD_OUT})
    return store


@pytest.fixture(scope="module")
def sagittal(geo: ObjectStore) -> ViewSummary:
    return _prepare(geo, "geo", axis=0, val_fraction=0, test_fraction=0)


def test_the_manifest_holds_the_canonical_shape_and_spacing(geo: ObjectStore) -> None:
    scans = {s.patient_id: s for s in load_manifest(geo, "geo").scans}
    for patient, (shape, spacing) in SCANS.items():
        assert (scans[patient].shape, scans[patient].orientation) == (list(shape), "RAS")
        assert scans[patient].spacing == pytest.approx(spacing)


def test_an_axial_view_records_the_median_pixel_spacing_of_its_slices_by_hand(geo: ObjectStore) -> None:
    view = _prepare(geo, "geo", axis=2, val_fraction=0, test_fraction=0)
    g = view.geometry
    assert isinstance(g, SliceGeometry)
    assert (g.axis, g.normal, g.in_plane, g.size, g.scans) == (2, "S", ("R", "A"), SIZE, 3)
    # each slice is padded to its longer in-plane side, then resized to 32: spacing × side / 32
    # geo_000: side 24 → (0.6, 0.9); geo_001: side 28 → (0.7, 1.05); geo_002: side 32 → (0.8, 1.2)
    assert g.pixel_spacing.median == pytest.approx((0.7, 1.05))
    assert g.pixel_spacing.min == pytest.approx((0.6, 0.9)) and g.pixel_spacing.max == pytest.approx((0.8, 1.2))
    assert g.slice_thickness == pytest.approx(3.0)  # median of 3.0, 3.0, 2.0


def test_a_sagittal_view_cuts_along_r_with_a_s_in_plane(sagittal: ViewSummary) -> None:
    g = sagittal.geometry
    assert isinstance(g, SliceGeometry)
    assert (g.axis, g.normal, g.in_plane) == (0, "R", ("A", "S"))
    # in-plane (A, S): geo_000 (20, 10) → side 20: (1.2, 3.0) × 20/32 = (0.75, 1.875); geo_001 side 28: (1.05, 2.625);
    # geo_002 (16, 8) → side 16: (1.2, 2.0) × 16/32 = (0.6, 1.0)
    assert g.pixel_spacing.median == pytest.approx((0.75, 1.875))
    assert g.pixel_spacing.min == pytest.approx((0.6, 1.0)) and g.pixel_spacing.max == pytest.approx((1.05, 2.625))
    assert g.slice_thickness == pytest.approx(0.8)


def test_geometry_is_over_the_training_split_only(geo: ObjectStore) -> None:
    view = _prepare(geo, "held", axis=2, val_fraction=0, test_fraction=0.25)
    held = set(view.patients["test"])
    assert len(held) == 1 and view.geometry.scans == 3
    pixel = {"geo_000": (0.6, 0.9), "geo_001": (0.7, 1.05), "geo_002": (0.8, 1.2), "geo_003": (2.5, 2.5)}
    train = [pixel[p] for p in view.patients["train"]]
    assert view.geometry.pixel_spacing.max == pytest.approx(tuple(np.max(train, axis=0)))
    assert view.geometry.pixel_spacing.median == pytest.approx(tuple(np.median(train, axis=0)))


def test_a_patch_view_records_the_median_voxel_spacing(geo: ObjectStore) -> None:
    view = _prepare(geo, "geo", mode="patches3d", val_fraction=0, test_fraction=0)
    g = view.geometry
    assert isinstance(g, PatchGeometry) and g.axes == ("R", "A", "S")
    assert g.voxel_spacing.median == pytest.approx((0.8, 1.2, 3.0)) and g.voxel_spacing.min == pytest.approx((0.8, 1.2, 2.0))


def _entry(scan_id: str, shape: list[int], spacing: list[float], orientation: str) -> ScanEntry:
    return ScanEntry(scan_id=scan_id, patient_id=scan_id, image_sha256="0" * 64, original_image_key="o", image_key="i", shape=shape,
                     spacing=spacing, orientation=orientation, original_filename="f.nii.gz")


def test_2d_scans_are_one_slice_each_without_thickness_and_mixed_planes_have_no_geometry() -> None:
    spec = ViewSpec(mode="slices2d", size=32, axis=0, val_fraction=0, test_fraction=0, seed=0, keep_empty=False)
    flat = [_entry("a", [16, 32], [0.5, 0.25], "RAS"), _entry("b", [64, 32], [0.25, 0.5], "RAS")]
    g = view_geometry(spec, flat)  # a 2D scan is cut along its third axis whatever the view's axis
    assert (g.axis, g.normal, g.in_plane, g.slice_thickness) == (2, "S", ("R", "A"), None)
    assert g.pixel_spacing.min == (0.5, 0.25) and g.pixel_spacing.max == (0.5, 1.0)  # (0.5, 0.25) × 32/32, (0.25, 0.5) × 64/32
    assert slice_affine(g)[:3, 2].tolist() == [0.0, 0.0, 1.0]  # no thickness: a 1 mm normal, and the manifest says so
    assert "no slice thickness" in geometry_section(g)["note"]
    assert view_geometry(spec, [*flat, _entry("c", [8, 8, 8], [1.0, 1.0, 1.0], "RAS")]) is None  # sagittal 3D slices beside axial 2D


def test_views_from_before_geometry_load_without_it_and_keep_their_id(geo: ObjectStore, sagittal: ViewSummary) -> None:
    stored = sagittal.model_dump(mode="json")
    assert stored["geometry"]["mode"] == "slices2d" and parse_view(stored, "now").geometry == sagittal.geometry
    old = parse_view({k: v for k, v in stored.items() if k != "geometry"}, "old view.json")
    assert old.geometry is None and "geometry" not in old.model_dump(mode="json")  # dumps as it was written
    assert "geometry" not in sagittal.spec.model_dump(mode="json")
    assert sagittal.view_id == view_id_for(load_manifest(geo, "geo"), sagittal.spec.model_dump(mode="json"))


def _nifti(store: ObjectStore, key: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(key)))


def test_a_cohort_reads_back_in_the_views_millimetres_with_nibabel_and_pydicom(
    store: LocalStore, in_process: InProcessSampler, sagittal: ViewSummary, tmp_path: Path
) -> None:
    g = sagittal.geometry
    write_cohort(store, "cohorts/geo/", in_process, count=2, seed=3, batch_size=2, provenance=PROVENANCE,
                 formats=("nifti", "dicom"), dicom=WHO, geometry=g)
    manifest = read_manifest(store, "cohorts/geo/")
    section = manifest["geometry"]
    assert section["pixel_spacing_mm"] == pytest.approx([0.75, 1.875]) and section["slice_thickness_mm"] == pytest.approx(0.8)
    assert "median over the 3 training scans" in section["note"] and "[0.6, 1.0] to [1.05, 2.625]" in section["note"]
    assert cohort_geometry(manifest) == g
    # array axis 0 → A, axis 1 → S, the normal → R: the permutation the slices were cut with
    expected = np.array([[0, 0, 0.8, 0], [0.75, 0, 0, 0], [0, 1.875, 0, 0], [0, 0, 0, 1]])
    assert np.allclose(section["affine"], expected)
    for sample in manifest["samples"]:
        image, label = _nifti(store, sample["image"]["key"]), _nifti(store, sample["label"]["key"])
        for img in (image, label):
            assert img.header.get_zooms() == pytest.approx((0.75, 1.875))
            assert np.allclose(img.affine, expected, atol=1e-6) and np.allclose(img.get_qform(), expected, atol=1e-6)
            assert nib.aff2axcodes(img.affine) == ("A", "S", "R")

        ds = pydicom.dcmread(io.BytesIO(store.get_bytes(sample["dicom"]["image"]["key"])))
        # PixelSpacing: (between rows = along array axis 1, between columns = along axis 0); directions in LPS
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.875, 0.75])
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx([0, -1, 0, 0, 0, 1])
        assert float(ds.SliceThickness) == pytest.approx(0.8)
        read = assemble_series([("image.dcm", ds)], max_voxels=10**6)  # the DICOM, read back into RAS: the NIfTI's plane
        assert np.allclose(read.affine[:3, :2], expected[:3, :2], atol=1e-5) and np.allclose(read.affine[:3, 3], 0, atol=1e-5)

        seg = pydicom.dcmread(io.BytesIO(store.get_bytes(sample["dicom"]["seg"]["key"])))
        shared = seg.SharedFunctionalGroupsSequence[0]
        measures = shared.PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == pytest.approx([1.875, 0.75])
        assert float(measures.SliceThickness) == pytest.approx(0.8)
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        assert [float(v) for v in orientation] == pytest.approx([0, -1, 0, 0, 0, 1])
        mask = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance([ds.SOPInstanceUID], combine_segments=True)[0]
        assert np.array_equal(mask.T, np.asanyarray(label.dataobj))

    first = manifest["samples"][0]["dicom"]
    for part in ("image", "seg"):  # dicom3tools' IOD checker finds no error in either object
        path = tmp_path / f"{part}.dcm"
        path.write_bytes(store.get_bytes(first[part]["key"]))
        checked = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True)
        assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    out = tmp_path / "dcm2niix"
    out.mkdir()
    folder = tmp_path / "image"
    folder.mkdir()
    (tmp_path / "image.dcm").rename(folder / "image.dcm")
    subprocess.run([shutil.which("dcm2niix"), "-b", "n", "-z", "n", "-o", str(out), "-f", "x", str(folder)], check=True,
                   capture_output=True)
    converted = nib.load(next(out.glob("*.nii")))
    ours = _nifti(store, manifest["samples"][0]["image"]["key"])
    # dcm2niix's plane is ours, up to the flips and swap each reader chooses: the same axis codes once canonical
    theirs = canonicalise(np.asarray(converted.dataobj, np.float32).reshape(converted.shape[:2]), converted.affine)
    mine = canonicalise(np.asarray(ours.dataobj, np.float32), ours.affine)
    assert theirs.spacing == pytest.approx((0.75, 1.875)) and mine.spacing == pytest.approx((0.75, 1.875))
    assert np.allclose(theirs.affine[:3, :2], mine.affine[:3, :2], atol=1e-4)


def test_regeneration_reproduces_pixels_and_nifti_bytes(store: LocalStore, in_process: InProcessSampler, sagittal: ViewSummary) -> None:
    write_cohort(store, "cohorts/geo/", in_process, count=3, seed=8, batch_size=2, provenance=PROVENANCE, geometry=sagittal.geometry)
    manifest = read_manifest(store, "cohorts/geo/")
    images, masks = regenerate(manifest, in_process, [2, 0], verify=True)
    for k, index in enumerate([2, 0]):
        image_bytes, label_bytes = sample_nifti_bytes(images[k], masks[k], cohort_geometry(manifest))
        assert store.get_bytes(manifest["samples"][index]["image"]["key"]) == image_bytes
        assert store.get_bytes(manifest["samples"][index]["label"]["key"]) == label_bytes


def test_a_cohort_of_a_view_without_geometry_keeps_the_identity_and_says_so(store: LocalStore, in_process: InProcessSampler) -> None:
    write_cohort(store, "cohorts/old/", in_process, count=1, seed=1, batch_size=1, provenance=PROVENANCE,
                 formats=("nifti", "dicom"), dicom=WHO)
    manifest = read_manifest(store, "cohorts/old/")
    assert manifest["geometry"]["view"] is None and cohort_geometry(manifest) is None
    assert "records no slice geometry" in manifest["geometry"]["note"] and "identity affine" in manifest["geometry"]["note"]
    sample = manifest["samples"][0]
    assert np.array_equal(_nifti(store, sample["image"]["key"]).affine, np.eye(4)) and np.array_equal(slice_affine(None), np.eye(4))
    ds = pydicom.dcmread(io.BytesIO(store.get_bytes(sample["dicom"]["image"]["key"])))
    assert [float(v) for v in ds.PixelSpacing] == [1.0, 1.0]


def test_a_geometry_of_another_slice_size_is_refused_and_nothing_is_left(store: LocalStore, in_process: InProcessSampler,
                                                                        sagittal: ViewSummary) -> None:
    other = sagittal.geometry.model_copy(update={"size": 64})
    with pytest.raises(InvalidInput, match="32-pixel images, but the geometry given is that of 64-pixel view slices"):
        write_cohort(store, "cohorts/bad/", in_process, count=1, seed=1, batch_size=1, provenance=PROVENANCE, geometry=other)
    assert list(store.list("cohorts/bad/")) == []


def test_the_sample_cohort_job_writes_its_generators_view_geometry(geo: ObjectStore, generator: SmallGenerator,
                                                                   sagittal: ViewSummary) -> None:
    from medsynth.handlers.sample import sample_cohort

    checkpoint_key = "generators/geo-gen/checkpoint.pt"
    geo.put_bytes(checkpoint_key, save_checkpoint(Checkpoint(spec=generator.spec, step=1, nets=generator.weights, ema={}, optimizers={})))
    entry = {"generator_id": "geo-gen", "family": "joint-gan", "spec": generator.spec.to_dict(), "dataset": "geo",
             "dataset_version": sagittal.dataset_version, "view_id": sagittal.view_id, "checkpoint_key": checkpoint_key,
             "archive_key": "generators/geo-gen/model.mar", "model_name": "geo-gen", "weights_fingerprint": "0" * 16,
             "steps_done": 1, "curves_key": "generators/geo-gen/curves.json", "registered_at": datetime.now(timezone.utc).isoformat()}
    job_id = new_job_id(JobKind.train_generator)
    geo.put_json(f"generators/{job_id}/generator.json", entry)
    JobRecords(geo).put(JobRecord(job_id=job_id, kind=JobKind.train_generator, spec={}, state=JobState.succeeded,
                                  result_keys={"generator": f"generators/{job_id}/generator.json"}))
    ctx = Ctx(geo)
    result = sample_cohort(jobs_pb2.SampleCohort(generator_id=job_id, count=2, seed=1, formats=["nifti"]), ctx)
    manifest = geo.get_json(result["manifest"])
    assert cohort_geometry(manifest) == sagittal.geometry and manifest["provenance"]["view_id"] == sagittal.view_id
    image = _nifti(geo, manifest["samples"][0]["image"]["key"])
    assert image.header.get_zooms() == pytest.approx((0.75, 1.875)) and nib.aff2axcodes(image.affine) == ("A", "S", "R")
