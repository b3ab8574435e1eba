"""Raw datasets of the segmentation world: nnU-Net v2's, and the Medical Segmentation Decathlon's it grew from.

nnU-Net v2 (``documentation/dataset_format.md`` of nnU-Net)::

    DatasetXXX_Name/
        dataset.json                  channel_names {"0": "MR"}, labels {"background": 0, "tumour": 1}
                                      (name → value), numTraining, file_ending ".nii.gz"
        imagesTr/<case>_0000.nii.gz   channel 0 of case <case> (_0001 its channel 1, ...)
        labelsTr/<case>.nii.gz

The Decathlon names images ``imagesTr/<case>.nii.gz`` and its dataset.json declares ``modality``
{"0": "MRI"} and ``labels`` {"0": "background", "1": "tumour"} (value → name).

:func:`read_dataset_json` and :func:`raw_cases` read either layout; :func:`dataset_json` and
:func:`case_paths` are what an export writes. A 2D case is written as a NIfTI of shape (x, y, 1)
(:func:`nnunet_case`) whose slice axis has nnU-Net's 2D spacing (999 × the in-plane one): nnU-Net plans
its ``2d`` configuration alone for such data, and the full 3D affine keeps the slice's orientation,
which a 2D NIfTI cannot carry to SimpleITK for sagittal or coronal slices.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medsynth.core.errors import InvalidInput
from medsynth.io.nifti import load_nifti, to_nifti_bytes

SUFFIXES = (".nii.gz", ".nii")
FILE_ENDING = ".nii.gz"  # what exports write
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
BACKGROUND = "background"
SLICE_SPACING_FACTOR = 999.0  # nnU-Net's spacing across a 2D image: 999 × its largest in-plane spacing
Layout = Literal["decathlon", "nnunet-v2"]


@dataclass(frozen=True)
class DatasetJson:
    """What a raw dataset's ``dataset.json`` declares.

    Attributes:
        layout: ``"nnunet-v2"`` when it has ``channel_names``, else ``"decathlon"``.
        channels: the channel (modality) names in channel order; () when it declares none.
        labels: label value → name, background included where declared; region labels of nnU-Net
            (a name for several values) are left out: they name no one value.
        file_ending: of every image and label file.
    """

    layout: Layout
    channels: tuple[str, ...]
    labels: dict[int, str]
    file_ending: str = FILE_ENDING


@dataclass(frozen=True)
class RawCase:
    """One training case: its image files, one per channel in channel order (``channels`` their
    numbers), and its label map."""

    name: str
    images: tuple[Path, ...]
    label: Path | None
    channels: tuple[int, ...] = (0,)


def case_name(path: Path, ending: str | None = None) -> str | None:
    """The file's name without its NIfTI suffix (``ending`` only, where given); None for other files
    and for macOS ``._`` resource forks (the official MSD tarballs ship them)."""
    name = path.name
    if name.startswith("."):
        return None
    return next((name[: -len(s)] for s in ((ending,) if ending else SUFFIXES) if name.endswith(s)), None)


def read_dataset_json(root: Path) -> DatasetJson | None:
    """``root/dataset.json`` read as nnU-Net v2's (``channel_names``, which then needs ``labels`` and
    ``file_ending``) or the Decathlon's (``modality``, ``labels`` optional); None without the file.

    Raises:
        InvalidInput: not JSON, a required field missing, or a field of the wrong form (named).
    """
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not a Decathlon dataset.json (nor an nnU-Net v2 one): {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path} is not a Decathlon dataset.json (nor an nnU-Net v2 one): a {type(raw).__name__}, not an object")
    if "channel_names" in raw:
        missing = [k for k in ("labels", "file_ending") if k not in raw]
        if missing:
            raise InvalidInput(f"{path} is an nnU-Net v2 dataset.json (it has channel_names) without {' and '.join(missing)}")
        ending = raw["file_ending"]
        if ending not in SUFFIXES:
            raise InvalidInput(f"{path}: file_ending {ending!r}; only NIfTI ({', '.join(SUFFIXES)}) can be read")
        return DatasetJson("nnunet-v2", _channels(raw["channel_names"], path, "channel_names"), _v2_labels(raw["labels"], path), ending)
    channels = _channels(raw["modality"], path, "modality") if "modality" in raw else ()
    return DatasetJson("decathlon", channels, _decathlon_labels(raw.get("labels") or {}, path))


def _channels(declared: Any, path: Path, field: str) -> tuple[str, ...]:
    if isinstance(declared, dict):
        if not all(str(k).isdigit() for k in declared):
            raise InvalidInput(f"{path}: {field} keys are channel numbers (\"0\", \"1\", ...), got {sorted(map(str, declared))}")
        return tuple(str(declared[k]) for k in sorted(declared, key=lambda k: int(k)))
    if isinstance(declared, list):
        return tuple(str(m) for m in declared)
    return (str(declared),)


def _v2_labels(declared: Any, path: Path) -> dict[int, str]:
    """nnU-Net v2's ``labels``: name → value, or name → [values] for a region (left out)."""
    if not isinstance(declared, dict) or not declared:
        raise InvalidInput(f"{path}: labels must map each label name to its value ({{\"background\": 0, ...}}), got {declared!r}")
    out: dict[int, str] = {}
    for name, value in declared.items():
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            continue  # a region: several values under one name
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{path}: label {name!r} has value {value!r}; a label value is an integer >= 0")
        if value in out:
            raise InvalidInput(f"{path}: labels {out[value]!r} and {name!r} both have value {value}")
        out[value] = str(name)
    return dict(sorted(out.items()))


def _decathlon_labels(declared: Any, path: Path) -> dict[int, str]:
    """The Decathlon's ``labels``: value (a string of digits) → name."""
    if not isinstance(declared, dict) or not all(str(k).isdigit() for k in declared):
        raise InvalidInput(f"{path}: labels must map each label value to its name ({{\"0\": \"background\", ...}}), got {declared!r}")
    return {int(k): str(v) for k, v in sorted(declared.items(), key=lambda kv: int(kv[0]))}


def raw_cases(root: Path, declared: DatasetJson | None = None) -> list[RawCase]:
    """The training cases of ``root`` (``imagesTr/`` and, where present, ``labelsTr/``), in case-name
    order. In nnU-Net's layout — a dataset.json with ``channel_names`` (v2), or images named
    ``<case>_0000`` beside labels named ``<case>`` (v2, or v1 with a Decathlon dataset.json) — a case's
    channel files are gathered under its name.

    Raises:
        InvalidInput: no ``imagesTr/``; in nnU-Net v2's layout, an image not named ``<case>_XXXX``.
    """
    images = root / "imagesTr"
    if not images.is_dir():
        raise InvalidInput(f"{root} is not in the Decathlon or nnU-Net layout: no imagesTr/ folder")
    ending = declared.file_ending if declared is not None and declared.layout == "nnunet-v2" else None
    labels_dir = root / "labelsTr"
    labels = {n: p for p in sorted(labels_dir.iterdir()) if (n := case_name(p, ending))} if labels_dir.is_dir() else {}
    files = {n: p for p in sorted(images.iterdir()) if (n := case_name(p, ending))}
    if ending is None and not _looks_v2(files, labels):
        return [RawCase(name, (path,), labels.get(name)) for name, path in files.items()]
    channels: dict[str, dict[int, Path]] = {}
    for name, path in files.items():
        match = CHANNEL.match(name)
        if match is None:
            raise InvalidInput(f"{path.relative_to(root)} is not named <case>_<channel>{ending or FILE_ENDING} "
                               "(e.g. case_001_0000.nii.gz), as nnU-Net v2's layout has it")
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    return [RawCase(case, tuple(found[k] for k in sorted(found)), labels.get(case), tuple(sorted(found)))
            for case, found in sorted(channels.items())]


def _looks_v2(images: dict[str, Path], labels: dict[str, Path]) -> bool:
    """Without a v2 dataset.json: every image named ``<case>_XXXX``, none named as a label, some
    ``<case>`` a label."""
    stems = [CHANNEL.match(name) for name in images]
    return (bool(images) and all(stems) and not set(images) & set(labels)
            and any(m["case"] in labels for m in stems if m is not None))


def several_channels(case: RawCase) -> str | None:
    """Why ``case`` is not one single-channel image (several channel files, or one that is not
    channel 0), or None."""
    if case.channels == (0,):
        return None
    names = ", ".join(p.name for p in case.images)
    if len(case.images) == 1:
        return f"case {case.name} has no channel 0, only {names}"
    return f"case {case.name} has {len(case.images)} channel files ({names}); multi-channel images are not supported yet"


# --- writing ---------------------------------------------------------------------------------------


def dataset_folder(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name``, as nnU-Net finds datasets by their three-digit id.

    Raises:
        InvalidInput: an id outside 1..999, or a name that is not letters, digits, ``_`` and ``-``.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise InvalidInput(f"an nnU-Net dataset id is an integer from 1 to 999, got {dataset_id!r}")
    if not DATASET_NAME.match(name):
        raise InvalidInput(f"an nnU-Net dataset name is 1-64 letters, digits, '_' or '-' (starting with a letter or digit), got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def case_paths(root: Path, case: str) -> tuple[Path, Path]:
    """Where a single-channel case's image and label map go under the dataset folder ``root``."""
    return root / "imagesTr" / f"{case}_0000{FILE_ENDING}", root / "labelsTr" / f"{case}{FILE_ENDING}"


def nnunet_case(image: bytes, label: bytes, case: str, *, max_voxels: int = 1 << 24) -> tuple[bytes, bytes, set[int]]:
    """A 2D case — image and label map as 2D NIfTI bytes, as cohorts store them — as nnU-Net takes
    it: both ``(x, y, 1)`` NIfTI (SimpleITK, nnU-Net's reader, refuses a 2D file whose in-plane axes
    leave the axial plane: sagittal or coronal slices) with the image's affine, its slice axis made
    nnU-Net's 2D spacing (:func:`slice_axis_for_2d`); the image float32, the label map uint8; and the
    label values.

    Raises:
        InvalidInput: naming the case, when either is not 2D, their shapes or affines differ, or the
            label map holds other than integers 0-255.
    """
    img = load_nifti(image, what=f"case {case}'s image", max_voxels=max_voxels)
    seg = load_nifti(label, what=f"case {case}'s label map", max_voxels=max_voxels)
    if len(img.shape) != 2:
        raise InvalidInput(f"case {case}: the image has shape {img.shape}; a 2D case's image has two axes")
    if seg.shape != img.shape:
        raise InvalidInput(f"case {case}: the label map's shape {seg.shape} is not the image's {img.shape}")
    if not np.allclose(seg.affine, img.affine, atol=1e-5):
        raise InvalidInput(f"case {case}: the label map's affine is not the image's:\n{seg.affine}\nvs\n{img.affine}")
    mask = np.asanyarray(seg.dataobj)
    values = np.unique(mask)
    if values.size and (values.min() < 0 or values.max() > 255 or not np.all(values == np.round(values))):
        raise InvalidInput(f"case {case}: label values {values[:10].tolist()} are not integers 0-255")
    pixels = np.asanyarray(img.dataobj, dtype=np.float32)[..., None]
    affine = slice_axis_for_2d(img.affine)
    return to_nifti_bytes(pixels, affine), to_nifti_bytes(mask.astype(np.uint8)[..., None], affine), {int(v) for v in values}


def slice_axis_for_2d(affine: np.ndarray) -> np.ndarray:
    """``affine`` with its third column — the slice normal — :data:`SLICE_SPACING_FACTOR` times the
    larger in-plane spacing long: nnU-Net's convention for 2D data (its SimpleITK reader gives a 2D
    image that spacing), without which its planner, which takes the axis of largest spacing as the one
    to slice along, would cut a slice whose pixels are coarser than its thickness into lines. The
    in-plane columns (spacing and orientation) and the origin are kept."""
    out = np.array(affine, dtype=np.float64)
    normal = out[:3, 2]
    if not np.linalg.norm(normal):
        normal = np.cross(out[:3, 0], out[:3, 1])
    in_plane = max(np.linalg.norm(out[:3, 0]), np.linalg.norm(out[:3, 1]))
    out[:3, 2] = normal / np.linalg.norm(normal) * in_plane * SLICE_SPACING_FACTOR
    return out


def label_table(values: set[int], names: dict[int, str]) -> dict[str, int]:
    """nnU-Net's ``labels`` (name → value) for label maps holding ``values``: every value from 0 to
    the largest (nnU-Net wants them consecutive), 0 named background, the others by ``names`` where
    given (made unique, and never nnU-Net's reserved ``background`` or ``ignore``), else ``label_<v>``."""
    top = max(values | {0})
    if top > 255:
        raise InvalidInput(f"label value {top} is above 255; nnU-Net's label maps here are uint8")
    table = {BACKGROUND: 0}
    for value in range(1, top + 1):
        name = str(names.get(value) or f"label_{value}").strip() or f"label_{value}"
        if name in table or name.lower() in (BACKGROUND, "ignore"):
            name = f"{name}_{value}"
        table[name] = value
    return table


def dataset_json(*, channel: str, labels: dict[str, int], cases: int, name: str, description: str) -> dict[str, Any]:
    """The dataset.json of a single-channel nnU-Net v2 dataset of ``cases`` training cases."""
    if cases < 1:
        raise InvalidInput("an nnU-Net dataset needs at least one training case")
    return {"channel_names": {"0": channel}, "labels": labels, "numTraining": cases, "file_ending": FILE_ENDING,
            "name": name, "description": description}
