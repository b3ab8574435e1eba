"""The checkpoint format: round trip, weights_only loading, corrupt and unknown-version errors."""

from __future__ import annotations

import io

import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import Generator
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, load_generator, save_checkpoint
from medsynth.training.gan_loop import LossCurves, init_nets, snapshot

from training_data import tiny_config


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    config = tiny_config(seed=3)
    nets = init_nets(config, torch.device("cpu"))
    with torch.no_grad():  # make the EMA copy distinguishable from the raw generator
        for p in nets.generator_ema.parameters():
            p.add_(1.0)
    curves = LossCurves(device=torch.device("cpu"), points={"step": [1], "loss_d": [0.5], "loss_g": [0.25]})
    return snapshot(nets, config, 7, curves)


def _raw(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def test_round_trip(checkpoint: Checkpoint) -> None:
    data = save_checkpoint(checkpoint)
    raw = _raw(data)  # the whole file loads with weights_only=True
    assert raw["format_version"] == 1 and raw["kind"] == "joint-gan"
    assert raw["config"] == checkpoint.config.to_dict()

    loaded = load_checkpoint(data)
    assert loaded.config == checkpoint.config and loaded.step == 7
    assert loaded.metrics["curves"] == {"step": [1], "loss_d": [0.5], "loss_g": [0.25]}
    assert loaded.rng == {"scheme": "per-step-seed", "seed": 3}
    for name in ("generator", "generator_ema", "discriminator"):
        before, after = getattr(checkpoint, name), getattr(loaded, name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.opt_g["param_groups"][0]["lr"] == checkpoint.config.lr_g


def test_load_generator_picks_weights_and_is_in_eval_mode(checkpoint: Checkpoint) -> None:
    data = save_checkpoint(checkpoint)
    ema, raw = load_generator(data), load_generator(load_checkpoint(data), ema=False)
    assert isinstance(ema, Generator) and not ema.training and not raw.training
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensor, checkpoint.generator_ema[name])
    for name, tensor in raw.state_dict().items():
        assert torch.equal(tensor, checkpoint.generator[name])


@pytest.mark.parametrize("data", [b"", b"not a checkpoint", b"PK\x03\x04" + b"\x00" * 64])
def test_corrupt_bytes(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="^corrupt checkpoint: "):
        load_checkpoint(data)


def test_truncated_checkpoint(checkpoint: Checkpoint) -> None:
    data = save_checkpoint(checkpoint)
    with pytest.raises(InvalidInput, match="^corrupt checkpoint: "):
        load_checkpoint(data[: len(data) // 2])


def _resave(checkpoint: Checkpoint, **changes: object) -> bytes:
    raw = _raw(save_checkpoint(checkpoint))
    raw.update(changes)
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_format_version(checkpoint: Checkpoint, version: object) -> None:
    with pytest.raises(InvalidInput, match=f"unsupported checkpoint format_version {version!r}"):
        load_checkpoint(_resave(checkpoint, format_version=version))


def test_wrong_kind(checkpoint: Checkpoint) -> None:
    with pytest.raises(InvalidInput, match="'image-only'"):
        load_checkpoint(_resave(checkpoint, kind="image-only"))


def test_invalid_config_inside(checkpoint: Checkpoint) -> None:
    config = checkpoint.config.to_dict() | {"batch_size": 0}
    with pytest.raises(InvalidInput, match="corrupt checkpoint: its config is invalid: batch_size"):
        load_checkpoint(_resave(checkpoint, config=config))


def test_missing_key(checkpoint: Checkpoint) -> None:
    raw = _raw(save_checkpoint(checkpoint))
    del raw["generator_ema"]
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(InvalidInput, match="missing \\['generator_ema'\\]"):
        load_checkpoint(buffer.getvalue())


def test_mismatched_weights(checkpoint: Checkpoint) -> None:
    wrong = {k: v[..., :1] if v.ndim else v for k, v in checkpoint.generator_ema.items()}
    with pytest.raises(InvalidInput, match="do not fit"):
        load_generator(_resave(checkpoint, generator_ema=wrong))


def test_non_pickle_object_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "evil": object()}, buffer)  # not loadable with weights_only
    with pytest.raises(InvalidInput, match="^corrupt checkpoint: "):
        load_checkpoint(buffer.getvalue())
