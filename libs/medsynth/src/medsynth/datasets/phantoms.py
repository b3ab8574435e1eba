"""Synthetic MR-like phantoms: image + label-map volumes, so tests and the demo need no outside data.

Each phantom is a body cross-section (an ellipsoid with a bright fat rim and a dark posterior
"vertebra"), an organ (label 1: a smoothly deformed ellipsoid at a per-seed position and size) and a
nested structure inside it (label 2: a lesion, darker or brighter than the organ, never touching the
background). The image gets tissue textures, partial-volume blurring, a smooth multiplicative bias
field and Rician noise; intensities lie roughly in 0..1000 with background near zero.

Everything is deterministic by seed and works in 2D and 3D. Geometry is laid out in normalised
coordinates (-1..1 across the field of view), so a phantom fills its grid whatever the shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.core.errors import InvalidInput

DEFAULT_SHAPE: tuple[int, ...] = (48, 48, 32)
DEFAULT_SPACING: tuple[float, ...] = (1.0, 1.0, 2.5)
LABELS = {0: "background", 1: "organ", 2: "lesion"}


def make_phantom(
    seed: int,
    shape: tuple[int, ...] = DEFAULT_SHAPE,
    spacing: tuple[float, ...] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: ``(image float32, label uint8, affine 4x4)``.

    ``shape`` has 2 or 3 axes. ``spacing`` gives one voxel size (mm) per axis; for a 2D shape a
    3-element spacing is accepted too, its third entry becoming the slice thickness in the affine.
    The affine is diagonal (RAS, the spacing on the diagonal) and centres the grid on the origin.
    On grids of at least 4 voxels along each axis the label map contains 0, 1 and 2, and no label-2
    voxel touches a background voxel (not even diagonally).
    """
    shape, spacing = _check_geometry(seed, shape, spacing)
    rng = np.random.default_rng(seed)
    grid = _grid(shape)
    body_r, rim_width = _body(grid, rng)
    body = body_r < 1.0
    organ, organ_center, organ_radii = _organ(grid, rng, inside=body_r < 1.0 - 1.5 * rim_width)
    organ, lesion = _lesion(grid, rng, organ, organ_center, organ_radii)
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    tissue = _tissue_map(grid, rng, body, body_r > 1.0 - rim_width, label)
    image = _acquire(tissue, body, grid, rng)
    return image, label, _affine(shape, spacing)


def phantom_seed(seed: int, index: int) -> int:
    """The seed of patient ``index`` in a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_phantom_dataset(
    out_dir: Path,
    n: int,
    seed: int = 0,
    shape: tuple[int, ...] = DEFAULT_SHAPE,
    spacing: tuple[float, ...] = DEFAULT_SPACING,
) -> list[str]:
    """Write ``n`` phantoms in the Medical Segmentation Decathlon layout and return the case names.

    ``out_dir/imagesTr/phantom_{i:03d}.nii.gz`` (float32) and ``out_dir/labelsTr/<same name>``
    (uint8, same affine), plus ``out_dir/dataset.json``. Patient ``i`` is
    ``make_phantom(phantom_seed(seed, i), shape, spacing)``; the files are byte-for-byte reproducible.
    """
    from medsynth.io.nifti import to_nifti_bytes  # the io package imports nibabel; keep it lazy

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidInput(f"number of phantoms must be a non-negative integer, got {n!r}.")
    _check_seed(seed)
    out_dir = Path(out_dir)
    images, labels = out_dir / "imagesTr", out_dir / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    names = [f"phantom_{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        image, label, affine = make_phantom(phantom_seed(seed, i), shape, spacing)
        (images / f"{name}.nii.gz").write_bytes(to_nifti_bytes(image, affine))
        (labels / f"{name}.nii.gz").write_bytes(to_nifti_bytes(label, affine))
    (out_dir / "dataset.json").write_text(json.dumps(_dataset_json(names, len(shape)), indent=2) + "\n")
    return names


# --- geometry ------------------------------------------------------------------------------------


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInput(f"phantom seed must be a non-negative integer, got {seed!r}.")


def _check_geometry(seed: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    _check_seed(seed)
    shape = tuple(shape)
    if len(shape) not in (2, 3) or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise InvalidInput(f"phantom shape must be 2 or 3 positive integers, got {shape!r}.")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) not in (len(shape), 3):
        raise InvalidInput(f"phantom spacing must have {len(shape)} entries for shape {shape}, got {spacing!r}.")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidInput(f"phantom spacing must be positive and finite, got {spacing!r}.")
    return tuple(int(n) for n in shape), spacing


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Open (broadcastable) voxel-centre coordinates, -1..1 across each axis."""
    axes = []
    for axis, n in enumerate(shape):
        view = [1] * len(shape)
        view[axis] = n
        axes.append(((np.arange(n) + 0.5) / n * 2.0 - 1.0).reshape(view))
    return axes


def _affine(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    affine = np.eye(4)
    for axis, s in enumerate(spacing[:3]):
        affine[axis, axis] = s
    for axis, n in enumerate(shape):
        affine[axis, 3] = -(n - 1) / 2.0 * spacing[axis]
    return affine


def _smooth_field(grid: list[np.ndarray], rng: np.random.Generator, max_freq: float, terms: int = 4) -> np.ndarray:
    """A random low-frequency field (sum of plane waves) with roughly unit standard deviation."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)))
    for _ in range(terms):
        freq = rng.uniform(-max_freq, max_freq, size=len(grid))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        field += rng.normal() * np.cos(np.pi * sum(f * g for f, g in zip(freq, grid)) + phase)
    return field * np.sqrt(2.0 / terms)


def _radius(grid: list[np.ndarray], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside the ellipsoid."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)))


def _body(grid: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Body radius field (slightly irregular; long along z so every slice cuts it) and rim width."""
    radii = np.array([rng.uniform(0.8, 0.9), rng.uniform(0.62, 0.76), rng.uniform(1.7, 2.3)])[: len(grid)]
    center = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), 0.0])[: len(grid)]
    r = _radius(grid, center, radii) * (1.0 + 0.025 * _smooth_field(grid, rng, max_freq=1.5))
    return r, float(rng.uniform(0.07, 0.11))


def _organ(grid: list[np.ndarray], rng: np.random.Generator, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Organ mask (a deformed ellipsoid within ``inside``), its centre and radii."""
    center = np.array([rng.uniform(-0.22, 0.22), rng.uniform(-0.12, 0.2), rng.uniform(-0.15, 0.15)])[: len(grid)]
    radii = np.array([rng.uniform(0.24, 0.38), rng.uniform(0.2, 0.32), rng.uniform(0.45, 0.8)])[: len(grid)]
    r = _radius(grid, center, radii) * (1.0 + 0.14 * _smooth_field(grid, rng, max_freq=1.2))
    organ = (r < 1.0) & inside
    if not organ.any():  # tiny grids: keep at least the voxel nearest the centre
        organ = _nearest(r, inside if inside.any() else np.ones_like(inside))
    return organ, center, radii


def _lesion(
    grid: list[np.ndarray],
    rng: np.random.Generator,
    organ: np.ndarray,
    organ_center: np.ndarray,
    organ_radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(organ, lesion)``: the lesion is a small deformed ellipsoid inside the organ that never touches
    the background. Where the organ is too thin to hold one, it grows a ring around a one-voxel lesion."""
    direction = rng.normal(size=len(grid))
    direction /= np.linalg.norm(direction)
    center = organ_center + organ_radii * direction * rng.uniform(0.0, 0.35)
    radii = organ_radii * rng.uniform(0.32, 0.48, size=len(grid))
    r = _radius(grid, center, radii) * (1.0 + 0.1 * _smooth_field(grid, rng, max_freq=2.0))
    full = ndimage.generate_binary_structure(organ.ndim, organ.ndim)
    core = ndimage.binary_erosion(organ, full)
    if not core.any():
        lesion = _nearest(r, organ)
        return organ | ndimage.binary_dilation(lesion, full), lesion
    lesion = (r < 1.0) & core
    return organ, lesion if lesion.any() else _nearest(r, core)


def _nearest(r: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A mask of the single allowed voxel with the smallest ``r``."""
    mask = np.zeros(allowed.shape, bool)
    mask[np.unravel_index(np.argmin(np.where(allowed, r, np.inf)), r.shape)] = True
    return mask


# --- intensities ---------------------------------------------------------------------------------


def _tissue_map(
    grid: list[np.ndarray], rng: np.random.Generator, body: np.ndarray, rim: np.ndarray, label: np.ndarray
) -> np.ndarray:
    """Noise-free mean intensity per voxel: soft tissue, fat rim, vertebra, organ and lesion."""
    soft = rng.uniform(300.0, 380.0)
    organ = soft * rng.uniform(1.45, 1.7)
    lesion = organ * (rng.uniform(0.42, 0.6) if rng.random() < 0.6 else rng.uniform(1.3, 1.45))
    vertebra_r = _radius(grid, np.array([0.0, -0.5, 0.0])[: len(grid)], np.array([0.13, 0.11, 10.0])[: len(grid)])
    tissue = np.zeros(body.shape)
    tissue[body] = soft
    tissue[body & (vertebra_r < 1.0)] = rng.uniform(160.0, 220.0)  # dark cortical bone ring ...
    tissue[body & (vertebra_r < 0.7)] = rng.uniform(420.0, 480.0)  # ... around brighter marrow
    tissue[body & rim] = rng.uniform(760.0, 860.0)
    tissue[label == 1] = organ
    tissue[label == 2] = lesion
    return tissue


def _acquire(tissue: np.ndarray, body: np.ndarray, grid: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Texture, partial-volume blur, bias field and Rician noise; float32 image."""
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), sigma=1.2)
    texture /= max(float(texture.std()), 1e-6)
    image = tissue * (1.0 + 0.05 * texture * body)
    image = ndimage.gaussian_filter(image, sigma=0.6)
    image *= np.exp(0.12 * _smooth_field(grid, rng, max_freq=0.5, terms=3))
    sigma = rng.uniform(10.0, 20.0)
    real = image + rng.normal(0.0, sigma, tissue.shape)
    imaginary = rng.normal(0.0, sigma, tissue.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _dataset_json(names: list[str], ndim: int) -> dict:
    return {
        "name": "medsynth-phantoms",
        "description": "Synthetic MR-like phantoms: an organ (1) with a nested lesion (2).",
        "tensorImageSize": f"{ndim}D",
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": len(names),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
    }
