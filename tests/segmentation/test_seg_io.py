"""Saving and loading trained segmenters."""

from __future__ import annotations

import io

import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.segmentation import load_segmenter, save_segmenter
from medsynth.segmentation.io import FORMAT_VERSION


def test_round_trip_restores_spec_weights_and_predictions(trained):
    loaded = load_segmenter(save_segmenter(trained))
    assert loaded.spec == trained.spec
    assert loaded.best_step == trained.best_step
    assert loaded.curves == trained.curves
    assert loaded.best_val_dice == trained.best_val_dice
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in trained.state_dict.items())
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained.model.eval()(x))


def _blob(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def test_loader_checks_version_and_content(trained):
    good = torch.load(io.BytesIO(save_segmenter(trained)), weights_only=True)
    with pytest.raises(InvalidInput, match="format_version 99"):
        load_segmenter(_blob({**good, "format_version": 99}))
    with pytest.raises(InvalidInput, match="lacks state_dict"):
        load_segmenter(_blob({k: v for k, v in good.items() if k != "state_dict"}))
    with pytest.raises(InvalidInput, match="do not fit"):
        load_segmenter(_blob({**good, "spec": {**good["spec"], "channels": [4, 8, 16]}}))
    with pytest.raises(InvalidInput, match="not a readable"):
        load_segmenter(b"not a checkpoint")
    assert good["format_version"] == FORMAT_VERSION
