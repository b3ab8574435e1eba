"""Segmentation training and evaluation: how useful a (synthetic) cohort is, measured by a U-Net
trained on it and tested on real held-out patients.

Modules: ``config`` (SegmentationSpec), ``train`` (train_segmenter, SegmentationResult),
``evaluate`` (evaluate_segmenter, per-case metrics), ``models`` (build_model, encoder),
``data`` (batch sampling), ``augment`` (image+mask augmentation), ``io`` (save/load),
``spacing`` (the physical pixel spacing of view items, for HD95 in mm).
"""

from __future__ import annotations

from medsynth.segmentation.config import SegmentationSpec
from medsynth.segmentation.evaluate import evaluate_segmenter
from medsynth.segmentation.io import load_segmenter, save_segmenter
from medsynth.segmentation.models import build_model, encoder
from medsynth.segmentation.train import SegmentationResult, train_segmenter

__all__ = [
    "SegmentationResult",
    "SegmentationSpec",
    "build_model",
    "encoder",
    "evaluate_segmenter",
    "load_segmenter",
    "save_segmenter",
    "train_segmenter",
]
