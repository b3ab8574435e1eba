"""Prediction and evaluation of a trained segmenter on real held-out patients.

Metrics are per CASE, a case being one patient: the patient's slices are stacked, ordered by
``(scan, index)``, into a ``(n_slices, S, S)`` array. Which slices there are is the view's choice:
views made with ``keep_empty_eval`` (the default of new prepare-dataset requests) hold every slice of
a test patient, with or without foreground, so a prediction of foreground on a slice without any
counts against the case; older views dropped slices without foreground, and a false positive there
went unseen. ``empty_slices`` and ``false_positive_slices`` (per case and in total) say how many
slices had no target foreground and on how many of them the model predicted some.

* Dice per foreground class is ``metrics.segmentation.dice_per_class`` on the stacked arrays, i.e.
  3D (volumetric) Dice over all the patient's voxels. Conventions (MONAI's ``compute_dice`` with
  ``ignore_empty=False`` except for the first):

  - class absent from prediction and target: NaN (not 1.0 as in MONAI): the case says nothing about
    the class, and means over classes and cases leave it out;
  - class predicted but absent from the target: 0 (every predicted voxel is a false positive);
  - class in the target but not predicted: 0.

  ``mean_dice`` is the mean over the case's classes with a Dice (None if it has none).
* HD95 per foreground class is computed in one of two ways, chosen by ``slice_spacing``:

  - ``None`` (default): per SLICE, in-plane, with that slice's (row, col) pixel spacing, then
    averaged over the patient's slices where it is defined. No assumption about the geometry between
    slices: for views that drop empty slices (their slices are not a volume) or whose slice spacing
    is unknown.
  - a number, or one per item: in 3D, per SCAN: the scan's slices, which must be contiguous (one
    index after another: every slice of the scan, as ``keep_empty_eval`` views hold them), stacked
    with spacing ``(slice_spacing, row, col)`` (a scan must have one in-plane spacing); a scan of one
    slice (a 2D scan; NaN slice spacing marks one) gets the in-plane 2D distance. The case's HD95 is
    the mean over its scans where it is defined (one scan per patient: the scan's 3D HD95).

  HD95 is MONAI's ``compute_hausdorff_distance(percentile=95, spacing=...)``
  (:func:`medsynth.metrics.segmentation.hd95`) and, as there, undefined (NaN, reported as None) when
  the prediction or the target of the class is empty. Each undefined value is explained in
  ``hd95_undefined``: ``"absent"`` (neither has the class), ``"false positive"`` (predicted, not in
  the target: Dice is 0), ``"missed"`` (in the target, not predicted: Dice is 0), or ``"no slice with
  both"`` / ``"no scan with both"`` (both have it, never in the same slice or scan). Read HD95 with
  these counts: a mean over the defined cases leaves out exactly the failures Dice scores as 0.

The unit of HD95 is the unit of ``spacing``, recorded as ``hd95_unit``: ``"mm"`` when the caller
passes the physical pixel spacing of each item (:mod:`medsynth.segmentation.spacing` derives it
from the view and the dataset manifest, and the slice spacing too), ``"px"`` (view pixels) by default.

Summaries (mean and percentile-bootstrap CI) come from ``metrics.segmentation.summarise`` over the
cases where a value is defined (it drops NaN; ``n`` says how many). In the returned dict NaN becomes ``None``, so
it is strict JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.segmentation.data import as_pairs

log = logging.getLogger(__name__)

PREDICT_BATCH = 64


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Argmax label maps ``(N, S, S)`` int64 for images ``(N, 1, S, S)``; the model is left in eval mode.
    Runs on the model's device (each batch copied there); the maps are on the images' device."""
    model.eval()
    device = next(iter(model.parameters()), images).device
    with torch.no_grad():
        out = [model(images[i : i + batch_size].to(device)).argmax(dim=1).to(images.device) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, *images.shape[2:]), dtype=torch.int64, device=images.device)


def pooled_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean foreground Dice with counts pooled over all items (the validation score for model
    selection): per class ``2|P∩T| / (|P| + |T|)``, averaged over classes present in prediction or
    target; 1.0 if no foreground anywhere."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        denom = int(p.sum()) + int(t.sum())
        if denom:
            scores.append(2.0 * int((p & t).sum()) / denom)
    return float(np.mean(scores)) if scores else 1.0


def group_cases(patients: Sequence[Any], scans: Sequence[Any] | None = None, index: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """Item indices per patient, each ordered by ``(scan, index)`` (or kept in input order without them).

    Args:
        patients: patient id per item.
        scans: scan id per item (optional).
        index: slice number per item (optional).

    Returns:
        ``{patient id: item indices}``, patients in sorted order.
    """
    patients = np.asarray(patients).astype(str)
    n = len(patients)
    scans_a = np.asarray(scans).astype(str) if scans is not None else np.full(n, "")
    index_a = np.asarray(index).astype(np.int64) if index is not None else np.arange(n)
    if len(scans_a) != n or len(index_a) != n:
        raise InvalidInput(f"patients, scans and index must have one entry per item, got {n}, {len(scans_a)} and {len(index_a)}.")
    order = np.lexsort((np.arange(n), index_a, scans_a, patients))  # last key is the primary one
    ids, starts = np.unique(patients[order], return_index=True)
    bounds = [*starts[1:], n]
    return {str(pid): order[s:e] for pid, s, e in zip(ids, starts, bounds)}


def evaluate_segmenter(
    model: nn.Module,
    real_test: Mapping[str, np.ndarray],
    num_classes: int,
    spacing: Sequence[float] | np.ndarray = (1.0, 1.0),
    *,
    spacing_unit: str = "px",
    slice_spacing: float | Sequence[float] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-case Dice and HD95 on the real test split (see the module docs for the definitions).

    Args:
        model: the trained network.
        real_test: a view split with ``images``, ``masks``, ``patients`` (``scans``, ``index``
            optional, used to order a patient's slices; 3D HD95 needs them).
        num_classes: mask classes including background.
        spacing: in-plane (row, col) pixel spacing for HD95: one pair for all items, or an
            ``(N, 2)`` array with one pair per item of ``real_test``.
        spacing_unit: the unit of ``spacing`` (``"mm"`` or ``"px"``), recorded as ``hd95_unit``.
        slice_spacing: ``None`` for per-slice HD95; for 3D HD95 per scan, the spacing between the
            stacked slices: one number, or one per item (NaN for the slice of a 2D scan).
        n_boot: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``{"per_case": [{"patient", "n_slices", "empty_slices", "false_positive_slices",
        "pixel_spacing", "slice_spacing", "dice": {cls: v}, "hd95": {cls: v}, "hd95_undefined":
        {cls: reason}, "mean_dice"}], "dice": {cls: summary}, "hd95": {cls: summary}, "mean_dice":
        summary, "hd95_undefined": {cls: {reason: count}}, "n_cases", "n_slices", "empty_slices",
        "false_positive_slices", "hd95_mode", "hd95_unit"}`` where ``cls`` is the class label as a
        string and a summary is ``{"mean", "ci_low", "ci_high", "n", "ci_level", "n_boot"}`` (from
        ``summarise``); ``mean_dice`` summarises each case's mean foreground Dice; ``pixel_spacing``
        lists the distinct (row, col) spacings of the case's slices, ``slice_spacing`` the distinct
        slice spacings (3D mode; ``[]`` per slice); ``hd95_undefined`` holds the classes whose HD95
        is None, with why.
    """
    from medsynth.metrics.segmentation import summarise

    pairs = as_pairs(real_test, "real_test", num_classes)
    item_spacing = _check_spacing(spacing, len(pairs))
    item_slice = _check_slice_spacing(slice_spacing, len(pairs))
    if spacing_unit not in ("mm", "px"):
        raise InvalidInput(f"spacing_unit must be 'mm' or 'px', got {spacing_unit!r}.")
    if "patients" not in real_test:
        raise InvalidInput("real_test needs 'patients' to group slices into cases.")
    n = len(pairs)
    scans = np.asarray(real_test["scans"]).astype(str) if "scans" in real_test else np.full(n, "")
    index = np.asarray(real_test["index"]).astype(np.int64) if "index" in real_test else None
    if item_slice is not None and index is None:
        raise InvalidInput("3D HD95 needs each item's slice number ('index') to stack a scan's slices.")
    cases = group_cases(real_test["patients"], scans, index)
    pred, target = predict(model, pairs.images).numpy(), pairs.masks.numpy()
    geometry = _Geometry(scans, index, item_spacing, item_slice)
    per_case = [_case_metrics(pid, idx, pred, target, num_classes, geometry) for pid, idx in cases.items()]
    classes = [str(c) for c in range(1, num_classes)]

    def summary(values: list[float | None]) -> dict[str, Any]:
        x = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        return _jsonable(summarise(x, n_boot=n_boot, seed=seed))  # summarise drops NaN

    undefined: dict[str, dict[str, int]] = {c: {} for c in classes}
    for case in per_case:
        for c, reason in case["hd95_undefined"].items():
            undefined[c][reason] = undefined[c].get(reason, 0) + 1
    result = {
        "per_case": per_case,
        "dice": {c: summary([case["dice"][c] for case in per_case]) for c in classes},
        "hd95": {c: summary([case["hd95"][c] for case in per_case]) for c in classes},
        "mean_dice": summary([case["mean_dice"] for case in per_case]),
        "hd95_undefined": undefined,
        "n_cases": len(per_case),
        "n_slices": n,
        "empty_slices": sum(case["empty_slices"] for case in per_case),
        "false_positive_slices": sum(case["false_positive_slices"] for case in per_case),
        "hd95_mode": "per-slice" if item_slice is None else "3d-stack",
        "hd95_unit": spacing_unit,
    }
    log.info("evaluated %d cases (%d slices, %d without foreground): mean foreground Dice %s",
             len(per_case), n, result["empty_slices"], result["mean_dice"]["mean"])
    return result


class _Geometry:
    """Per item: scan id, slice number, (row, col) spacing and slice spacing (``None``: per-slice HD95)."""

    def __init__(self, scans: np.ndarray, index: np.ndarray | None, spacing: np.ndarray, slice_spacing: np.ndarray | None) -> None:
        self.scans, self.index, self.spacing, self.slice_spacing = scans, index, spacing, slice_spacing


def _case_metrics(patient: str, idx: np.ndarray, pred_all: np.ndarray, target_all: np.ndarray, num_classes: int,
                  geo: _Geometry) -> dict[str, Any]:
    """One case's metrics; ``idx``: its items in ``(scan, index)`` order."""
    from medsynth.metrics.segmentation import dice_per_class

    pred, target = pred_all[idx], target_all[idx]
    dice = np.asarray(dice_per_class(pred, target, num_classes), dtype=np.float64)
    if geo.slice_spacing is None:
        hd = [_per_slice_hd95(pred == c, target == c, geo.spacing[idx]) for c in range(1, num_classes)]
        slice_spacings: list[float] = []
    else:
        scans = _scan_volumes(patient, idx, geo)
        hd = [_per_scan_hd95(pred == c, target == c, scans) for c in range(1, num_classes)]
        slice_spacings = sorted({sp for _, sp, _ in scans if math.isfinite(sp)})
    empty = ~target.reshape(len(target), -1).any(axis=1)
    mean = float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan
    undefined = {}
    for c, value in zip(range(1, num_classes), hd):
        if not math.isfinite(value):
            undefined[str(c)] = _why_undefined(bool((pred == c).any()), bool((target == c).any()), geo.slice_spacing is None)
    return {
        "patient": patient,
        "n_slices": int(len(pred)),
        "empty_slices": int(empty.sum()),
        "false_positive_slices": int((empty & pred.reshape(len(pred), -1).any(axis=1)).sum()),
        "pixel_spacing": np.unique(geo.spacing[idx], axis=0).tolist(),
        "slice_spacing": slice_spacings,
        "dice": {str(c): _finite_or_none(v) for c, v in zip(range(1, num_classes), dice)},
        "hd95": {str(c): _finite_or_none(v) for c, v in zip(range(1, num_classes), hd)},
        "hd95_undefined": undefined,
        "mean_dice": _finite_or_none(mean),
    }


def _why_undefined(predicted: bool, present: bool, per_slice: bool) -> str:
    if not predicted and not present:
        return "absent"
    if not present:
        return "false positive"
    if not predicted:
        return "missed"
    return "no slice with both" if per_slice else "no scan with both"


def _per_slice_hd95(pred: np.ndarray, target: np.ndarray, spacing: np.ndarray) -> float:
    """Mean of the in-plane HD95 of each slice where it is defined; ``spacing`` is (n_slices, 2)."""
    from medsynth.metrics.segmentation import hd95

    values = [float(hd95(p, t, sp)) for p, t, sp in zip(pred, target, spacing) if p.any() and t.any()]
    return float(np.mean(values)) if values else math.nan


def _scan_volumes(patient: str, idx: np.ndarray, geo: _Geometry) -> list[tuple[np.ndarray, float, tuple[float, float]]]:
    """The case's scans as ``(positions in idx, in slice order; slice spacing; (row, col) spacing)``,
    checked to be whole stacks: contiguous slice numbers, one in-plane and one slice spacing."""
    out = []
    scans = geo.scans[idx]
    for scan in dict.fromkeys(scans.tolist()):  # group_cases orders by scan, then index
        positions = np.flatnonzero(scans == scan)
        items = idx[positions]
        numbers = geo.index[items]
        if len(items) > 1 and not (np.diff(numbers) == 1).all():
            raise InvalidInput(f"3D HD95 needs every slice of a scan; patient {patient} scan {scan!r} has slices "
                               f"{_some(numbers)} (a view that drops empty slices needs per-slice HD95).")
        inplane = np.unique(geo.spacing[items], axis=0)
        if len(inplane) > 1:
            raise InvalidInput(f"3D HD95 needs one in-plane spacing per case and scan; patient {patient} scan {scan!r} has {inplane.tolist()}.")
        across = np.unique(geo.slice_spacing[items])
        if len(across) > 1 or (len(items) > 1 and not np.isfinite(across).all()):
            raise InvalidInput(f"3D HD95 needs one positive slice spacing per scan; patient {patient} scan {scan!r} has {across.tolist()}.")
        out.append((positions, float(across[0]), (float(inplane[0][0]), float(inplane[0][1]))))
    return out


def _per_scan_hd95(pred: np.ndarray, target: np.ndarray, scans: list[tuple[np.ndarray, float, tuple[float, float]]]) -> float:
    """Mean over the scans where it is defined of each scan's 3D HD95 (2D for a one-slice scan);
    ``pred`` and ``target`` are the case's binary masks of one class."""
    from medsynth.metrics.segmentation import hd95

    values = []
    for positions, across, inplane in scans:
        p, t = pred[positions], target[positions]
        if not (p.any() and t.any()):
            continue
        values.append(float(hd95(p[0], t[0], inplane)) if len(positions) == 1 else float(hd95(p, t, (across, *inplane))))
    return float(np.mean(values)) if values else math.nan


def _some(numbers: np.ndarray) -> str:
    shown = numbers[:12].tolist()
    return f"{shown}{' …' if len(numbers) > 12 else ''}"


def _check_spacing(spacing: Any, n: int) -> np.ndarray:
    """One (row, col) spacing per item: ``(n, 2)`` float64."""
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"spacing must be two positive in-plane values (row, col) or one such pair per item, got {spacing!r}.") from exc
    if values.shape == (2,):
        values = np.broadcast_to(values, (n, 2))
    if values.shape != (n, 2) or not (np.isfinite(values).all() and (values > 0).all()):
        shown = tuple(values.ravel()) if values.size <= 4 else f"an array of shape {values.shape}"
        raise InvalidInput(f"spacing must be two positive in-plane values (row, col) or an ({n}, 2) array of them, got {shown!r}.")
    return values


def _check_slice_spacing(slice_spacing: Any, n: int) -> np.ndarray | None:
    """``None``, or one slice spacing per item: ``(n,)`` float64, positive or NaN (a 2D scan's slice)."""
    if slice_spacing is None:
        return None
    try:
        values = np.asarray(slice_spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"slice_spacing must be positive, one value per item, or None, got {slice_spacing!r}.") from exc
    if values.ndim == 0:
        if not (math.isfinite(values) and values > 0):
            raise InvalidInput(f"slice_spacing must be positive or None, got {slice_spacing!r}.")
        return np.full(n, float(values))
    if values.shape != (n,) or (values[~np.isnan(values)] <= 0).any() or np.isinf(values).any():
        raise InvalidInput(f"slice_spacing per item must be an ({n},) array of positive values (NaN for a 2D scan's slice).")
    return values


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(summary: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[key] = _finite_or_none(value)
        else:
            out[key] = value
    return out
