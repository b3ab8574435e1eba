"""Synthetic phantoms: deterministic, anatomically plausible, nested labels, Decathlon layout on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medsynth.core.errors import InvalidInput
from medsynth.datasets.phantoms import make_phantom, phantom_seed, write_phantom_dataset

SHAPES = [(48, 48, 32), (24, 24, 10), (16, 16, 8), (48, 48), (24, 24)]


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b, c = make_phantom(3), make_phantom(3), make_phantom(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("shape", SHAPES)
def test_types_geometry_and_intensity_range(shape: tuple[int, ...]) -> None:
    image, label, affine = make_phantom(0, shape, spacing=(0.8, 0.8, 3.0)[: len(shape)])
    assert image.shape == label.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8 and affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(affine)[: len(shape)], (0.8, 0.8, 3.0)[: len(shape)])
    centre = affine @ [*((n - 1) / 2 for n in shape), *[0] * (3 - len(shape)), 1]
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)  # the grid is centred on the origin
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() < 1500
    corner = image[(slice(0, 3),) * len(shape)]
    assert corner.mean() < 60, "background should be near zero"
    assert np.median(image[label > 0]) > 300


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(8))
def test_labels_present_and_nested(seed: int, shape: tuple[int, ...]) -> None:
    _, label, _ = make_phantom(seed, shape)
    assert set(np.unique(label)) == {0, 1, 2}
    lesion = label == 2
    touching = ndimage.binary_dilation(lesion, ndimage.generate_binary_structure(label.ndim, label.ndim))
    assert not (touching & (label == 0)).any(), "label 2 must be enclosed by label 1"
    assert (label == 1).sum() > lesion.sum() / 4


@pytest.mark.parametrize("seed", range(6))
def test_organ_and_lesion_stand_out(seed: int) -> None:
    image, label, _ = make_phantom(seed)
    organ = label > 0
    shell = ndimage.binary_dilation(organ, iterations=2) & ~organ
    assert image[label == 1].mean() - image[shell].mean() > 60  # organ brighter than its surroundings
    assert abs(image[label == 2].mean() - image[label == 1].mean()) > 60  # lesion differs from organ


def test_seed_moves_the_organ() -> None:
    centres = {tuple(np.round(ndimage.center_of_mass(make_phantom(s)[1] > 0), 1)) for s in range(5)}
    assert len(centres) == 5


def test_default_phantom_is_fast() -> None:
    make_phantom(0)  # warm-up (imports, allocator)
    start = time.perf_counter()
    make_phantom(1)
    assert time.perf_counter() - start < 0.5


def test_2d_shape_with_3d_default_spacing() -> None:
    image, label, affine = make_phantom(2, (32, 32))
    assert image.shape == label.shape == (32, 32)
    np.testing.assert_allclose(np.diag(affine), (1.0, 1.0, 2.5, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"shape": (48,)}, "shape must be 2 or 3"),
        ({"shape": (8, 8, 8, 2)}, "shape must be 2 or 3"),
        ({"shape": (8, 0, 8)}, "positive integers"),
        ({"spacing": (1.0, -1.0, 2.0)}, "positive and finite"),
        ({"spacing": (1.0, 1.0)}, "3 entries"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        make_phantom(**{"seed": 0, **kwargs})


def test_write_phantom_dataset_in_decathlon_layout(tmp_path: Path) -> None:
    names = write_phantom_dataset(tmp_path / "msd", n=3, seed=5, shape=(16, 16, 8), spacing=(1.5, 1.5, 3.0))
    assert names == ["phantom_000", "phantom_001", "phantom_002"]
    for i, name in enumerate(names):
        image = nib.load(tmp_path / "msd" / "imagesTr" / f"{name}.nii.gz")
        label = nib.load(tmp_path / "msd" / "labelsTr" / f"{name}.nii.gz")
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(image.affine, label.affine)
        expected_image, expected_label, expected_affine = make_phantom(phantom_seed(5, i), (16, 16, 8), (1.5, 1.5, 3.0))
        np.testing.assert_allclose(image.affine, expected_affine)
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), expected_image)
        np.testing.assert_array_equal(np.asanyarray(label.dataobj), expected_label)
    meta = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}


def test_dataset_is_reproducible_and_patients_differ(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        write_phantom_dataset(tmp_path / folder, n=2, seed=1, shape=(12, 12, 6))
    first = (tmp_path / "a" / "imagesTr" / "phantom_000.nii.gz").read_bytes()
    assert first == (tmp_path / "b" / "imagesTr" / "phantom_000.nii.gz").read_bytes()
    assert first != (tmp_path / "a" / "imagesTr" / "phantom_001.nii.gz").read_bytes()
    assert phantom_seed(1, 0) != phantom_seed(1, 1) != phantom_seed(2, 1)


def test_negative_count_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="non-negative"):
        write_phantom_dataset(tmp_path, n=-1)
