"""Prediction and evaluation of a trained segmenter on real held-out patients.

Metrics are per CASE, a case being one patient: the patient's slices are stacked, ordered by
``(scan, index)``, into a ``(n_slices, S, S)`` array, and

* Dice per foreground class is ``metrics.segmentation.dice_per_class`` on the stacked arrays, i.e.
  volumetric Dice over the patient's slices (NaN where the class is absent from both);
* HD95 per foreground class is computed in one of two ways, chosen by ``slice_spacing``:

  - ``None`` (default): per SLICE, in-plane, with that slice's (row, col) pixel spacing, then
    averaged over the patient's slices where it is defined (``hd95`` gives NaN when a slice's
    prediction or target of that class is empty; a case with no defined slice gets NaN).
    This makes no assumption about the geometry between slices, which a view does not preserve:
    views drop slices without foreground by default, resize each slice on its own, and a patient
    may have several scans.
  - a number: on the stacked 3D arrays with spacing ``(slice_spacing, row, col)``, for views whose
    slices are known to be contiguous (one scan per patient, empty slices kept); a case's slices
    must then share one in-plane spacing.

The unit of HD95 is the unit of ``spacing``, recorded as ``hd95_unit``: ``"mm"`` when the caller
passes the physical pixel spacing of each item (:mod:`medsynth.segmentation.spacing` derives it
from the view and the dataset manifest), ``"px"`` (view pixels) by default.

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
    """Argmax label maps ``(N, S, S)`` int64 for images ``(N, 1, S, S)``; the model is left in eval mode."""
    model.eval()
    out = [model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, *images.shape[2:]), dtype=torch.int64)


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
    slice_spacing: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-case Dice and HD95 on the real test split (see the module docs for the definitions).

    Args:
        model: the trained network.
        real_test: a view split with ``images``, ``masks``, ``patients`` (``scans``, ``index``
            optional, used to order a patient's slices).
        num_classes: mask classes including background.
        spacing: in-plane (row, col) pixel spacing for HD95: one pair for all items, or an
            ``(N, 2)`` array with one pair per item of ``real_test``.
        spacing_unit: the unit of ``spacing`` (``"mm"`` or ``"px"``), recorded as ``hd95_unit``.
        slice_spacing: ``None`` for per-slice HD95, or the spacing between stacked slices for 3D HD95.
        n_boot: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``{"per_case": [{"patient", "n_slices", "pixel_spacing", "dice": {cls: v}, "hd95": {cls: v},
        "mean_dice"}], "dice": {cls: summary}, "hd95": {cls: summary}, "mean_dice": summary,
        "n_cases", "hd95_mode", "hd95_unit"}`` where ``cls`` is the class label as a string and a summary is
        ``{"mean", "ci_low", "ci_high", "n", "ci_level", "n_boot"}`` (from ``summarise``);
        ``mean_dice`` summarises each case's mean foreground Dice; ``pixel_spacing`` lists the
        distinct (row, col) spacings of the case's slices.
    """
    from medsynth.metrics.segmentation import summarise

    pairs = as_pairs(real_test, "real_test", num_classes)
    item_spacing = _check_spacing(spacing, slice_spacing, len(pairs))
    if spacing_unit not in ("mm", "px"):
        raise InvalidInput(f"spacing_unit must be 'mm' or 'px', got {spacing_unit!r}.")
    if "patients" not in real_test:
        raise InvalidInput("real_test needs 'patients' to group slices into cases.")
    cases = group_cases(real_test["patients"], real_test.get("scans"), real_test.get("index"))
    pred, target = predict(model, pairs.images).numpy(), pairs.masks.numpy()
    per_case = [_case_metrics(pid, pred[idx], target[idx], num_classes, item_spacing[idx], slice_spacing) for pid, idx in cases.items()]
    classes = [str(c) for c in range(1, num_classes)]

    def summary(values: list[float | None]) -> dict[str, Any]:
        x = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        return _jsonable(summarise(x, n_boot=n_boot, seed=seed))  # summarise drops NaN

    result = {
        "per_case": per_case,
        "dice": {c: summary([case["dice"][c] for case in per_case]) for c in classes},
        "hd95": {c: summary([case["hd95"][c] for case in per_case]) for c in classes},
        "mean_dice": summary([case["mean_dice"] for case in per_case]),
        "n_cases": len(per_case),
        "hd95_mode": "per-slice" if slice_spacing is None else "3d-stack",
        "hd95_unit": spacing_unit,
    }
    log.info("evaluated %d cases: mean foreground Dice %s", len(per_case), result["mean_dice"]["mean"])
    return result


def _case_metrics(patient: str, pred: np.ndarray, target: np.ndarray, num_classes: int, spacing: np.ndarray, slice_spacing: float | None) -> dict[str, Any]:
    from medsynth.metrics.segmentation import dice_per_class

    dice = np.asarray(dice_per_class(pred, target, num_classes), dtype=np.float64)
    distinct = np.unique(spacing, axis=0)
    if slice_spacing is not None and len(distinct) > 1:
        raise InvalidInput(f"3D HD95 needs one in-plane spacing per case; patient {patient} has {distinct.tolist()}.")
    hd = [_case_hd95(pred == c, target == c, spacing, slice_spacing) for c in range(1, num_classes)]
    mean = float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan
    return {
        "patient": patient,
        "n_slices": int(len(pred)),
        "pixel_spacing": distinct.tolist(),
        "dice": {str(c): _finite_or_none(v) for c, v in zip(range(1, num_classes), dice)},
        "hd95": {str(c): _finite_or_none(v) for c, v in zip(range(1, num_classes), hd)},
        "mean_dice": _finite_or_none(mean),
    }


def _case_hd95(pred: np.ndarray, target: np.ndarray, spacing: np.ndarray, slice_spacing: float | None) -> float:
    """``spacing`` is (n_slices, 2): the (row, col) spacing of each slice."""
    from medsynth.metrics.segmentation import hd95

    if slice_spacing is not None:
        return float(hd95(pred, target, (slice_spacing, *spacing[0])))
    values = [float(hd95(p, t, sp)) for p, t, sp in zip(pred, target, spacing) if p.any() or t.any()]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _check_spacing(spacing: Any, slice_spacing: float | None, n: int) -> np.ndarray:
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
    if slice_spacing is not None and not (math.isfinite(slice_spacing) and slice_spacing > 0):
        raise InvalidInput(f"slice_spacing must be positive or None, got {slice_spacing!r}.")
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

