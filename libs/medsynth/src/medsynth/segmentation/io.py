"""Saving and loading trained segmenters as bytes (``torch.save`` of a plain dict).

Format version 1::

    {"format_version": 1, "spec": SegmentationSpec.to_dict(), "state_dict": {name: tensor},
     "best_step": int, "curves": {"train_loss": [...], "val_step": [...], "val_dice": [...]},
     "best_val_dice": float, "image_size": int, "stopped_step": int, "stop_reason": str}

(the last two since early stopping; files without them load with ``stopped_step`` 0 and
``stop_reason`` ``"cap"``).

Only plain containers, numbers, strings and tensors are stored, so loading uses
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medsynth.core.errors import InvalidInput
from medsynth.segmentation.config import SegmentationSpec
from medsynth.segmentation.models import build_model
from medsynth.segmentation.train import SegmentationResult

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "spec", "state_dict", "best_step", "curves")


@dataclass
class LoadedSegmenter:
    """A segmenter read back by :func:`load_segmenter` (the model is in eval mode)."""

    spec: SegmentationSpec
    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    best_step: int
    curves: dict[str, list] = field(default_factory=dict)
    best_val_dice: float = math.nan
    image_size: int = 0
    stopped_step: int = 0
    stop_reason: str = "cap"


def save_segmenter(result: SegmentationResult) -> bytes:
    """Serialise a training result (spec, best weights, best step, curves) to bytes."""
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": result.spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in result.state_dict.items()},
        "best_step": int(result.best_step),
        "curves": result.curves,
        "best_val_dice": float(result.best_val_dice),
        "image_size": int(result.image_size),
        "stopped_step": int(result.stopped_step),
        "stop_reason": str(result.stop_reason),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_segmenter(data: bytes) -> LoadedSegmenter:
    """Read bytes written by :func:`save_segmenter` and rebuild the model.

    Raises:
        InvalidInput: the bytes are not a segmenter checkpoint, or its format version is unknown.
    """
    payload = _read_payload(data)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidInput(f"unsupported segmenter format_version {version!r} (this build reads {FORMAT_VERSION}).")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise InvalidInput(f"segmenter checkpoint lacks {', '.join(missing)}.")
    spec = SegmentationSpec.from_dict(dict(payload["spec"]))
    model = build_model(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InvalidInput(f"segmenter weights do not fit a {spec.model!r} built from the stored spec: {exc}") from exc
    model.eval()
    return LoadedSegmenter(
        spec=spec,
        model=model,
        state_dict=payload["state_dict"],
        best_step=int(payload["best_step"]),
        curves=payload["curves"],
        best_val_dice=float(payload.get("best_val_dice", math.nan)),
        image_size=int(payload.get("image_size", 0)),
        stopped_step=int(payload.get("stopped_step", 0)),
        stop_reason=str(payload.get("stop_reason", "cap")),
    )


def _read_payload(data: bytes) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"a segmenter checkpoint must be bytes, got {type(data).__name__}.")
    try:
        payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for garbage input
        raise InvalidInput(f"not a readable segmenter checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict):
        raise InvalidInput(f"a segmenter checkpoint holds a dict, got {type(payload).__name__}.")
    return payload
