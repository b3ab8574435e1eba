"""TrainConfig: defaults, round trip through plain data, and validation that names bad values."""

from __future__ import annotations

import json

import pytest

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import GanLoss, GeneratorConfig
from medsynth.training.config import TrainConfig


def test_defaults() -> None:
    config = TrainConfig(steps=10)
    assert config.loss is GanLoss.hinge
    assert config.batch_size == 32 and config.lr_g == config.lr_d == 2e-4
    assert config.betas == (0.5, 0.999) and config.ema_decay == 0.999
    assert config.checkpoint_every == 200 and config.seed == 0 and not config.diff_augment
    assert config.generator == GeneratorConfig()


def test_round_trip_through_json() -> None:
    config = TrainConfig(
        generator=GeneratorConfig(image_size=32, num_classes=4, latent_dim=64, base_channels=16),
        steps=500, loss=GanLoss.lsgan, batch_size=8, lr_g=1e-4, betas=(0.0, 0.99), ema_decay=0.0,
        diff_augment=True, checkpoint_every=50, log_every=10, seed=7,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["loss"] == "lsgan" and data["betas"] == [0.0, 0.99] and data["generator"]["num_classes"] == 4
    assert TrainConfig.from_dict(data) == config


def test_from_dict_fills_defaults_and_accepts_plain_forms() -> None:
    config = TrainConfig.from_dict({"steps": 3, "loss": "bce", "betas": [0.1, 0.2], "generator": {"image_size": 32}})
    assert config.loss is GanLoss.bce and config.betas == (0.1, 0.2)
    assert config.generator == GeneratorConfig(image_size=32)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"steps": 1, "stpes": 2}, "stpes"),
        ({"steps": 1, "generator": {"imagesize": 64}}, "imagesize"),
        ({"batch_size": 4}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "2.5"),
        ({"steps": True}, "True"),
        ({"steps": 1, "batch_size": -3}, "-3"),
        ({"steps": 1, "loss": "wgan"}, "wgan"),
        ({"steps": 1, "lr_g": 0}, "lr_g"),
        ({"steps": 1, "lr_d": float("nan")}, "lr_d"),
        ({"steps": 1, "betas": [0.5]}, "[0.5]"),
        ({"steps": 1, "betas": [0.5, 1.0]}, "betas[1]"),
        ({"steps": 1, "ema_decay": 1.0}, "ema_decay"),
        ({"steps": 1, "diff_augment": "yes"}, "'yes'"),
        ({"steps": 1, "checkpoint_every": 0}, "checkpoint_every"),
        ({"steps": 1, "log_every": "5"}, "log_every"),
        ({"steps": 1, "seed": -1}, "seed"),
        ({"steps": 1, "generator": {"image_size": 48}}, "48"),
        ({"steps": 1, "generator": {"base_channels": 0}}, "generator.base_channels"),
        ({"steps": 1, "generator": "big"}, "'big'"),
    ],
)
def test_invalid_values_are_named(data: dict, named: str) -> None:
    with pytest.raises(InvalidInput, match=named.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        TrainConfig.from_dict(data)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(InvalidInput, match="mapping"):
        TrainConfig.from_dict([("steps", 1)])  # type: ignore[arg-type]


def test_frozen() -> None:
    config = TrainConfig(steps=1)
    with pytest.raises(AttributeError):
        config.steps = 2  # type: ignore[misc]
