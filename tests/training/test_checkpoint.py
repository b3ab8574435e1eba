"""The checkpoint format: round trip, weights_only loading, format-1 checkpoints of the first joint
GAN, family checks, corrupt and unknown-version errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import SampleMode, prepare_data
from medsynth.sampling.generate import generate
from medsynth.generators.checkpoint import Checkpoint, load_checkpoint, load_sampling_nets, save_checkpoint
from medsynth.training.loop import LossCurves, init_state, snapshot

from training_data import family_names, squares, tiny_spec

FIXTURES = Path(__file__).parent / "fixtures"


def _checkpoint(family: str) -> Checkpoint:
    spec = tiny_spec(family, training={"seed": 3})
    images, masks = squares(8)
    state = init_state(spec, prepare_data(images, masks, spec.data, torch.device("cpu")))
    with torch.no_grad():  # make the EMA copies distinguishable from the raw networks
        for ema in state.ema.values():
            for p in ema.parameters():
                p.add_(1.0)
    state.extra = {"p": torch.tensor(0.25), "note": "kept"}
    points = {"step": [1], **{name: [0.5] for name in spec.family.loss_names_for(spec.options)}}
    curves = LossCurves(spec.family.loss_names_for(spec.options), device=torch.device("cpu"), points=points)
    return snapshot(state, spec, 7, curves)


@pytest.fixture(scope="module", params=family_names())
def checkpoint(request: pytest.FixtureRequest) -> Checkpoint:
    return _checkpoint(request.param)


def _raw(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def test_round_trip(checkpoint: Checkpoint) -> None:
    data = save_checkpoint(checkpoint)
    raw = _raw(data)  # the whole file loads with weights_only=True
    assert raw["format_version"] == 2 and raw["family"] == checkpoint.spec.options.family
    assert raw["spec"] == checkpoint.spec.to_dict()

    loaded = load_checkpoint(data, family=checkpoint.spec.options.family)
    assert loaded.spec == checkpoint.spec and loaded.step == 7
    assert loaded.rng == {"scheme": "per-step-seed", "seed": 3}
    assert loaded.extra["note"] == "kept" and torch.equal(loaded.extra["p"], torch.tensor(0.25))
    for group in ("nets", "ema"):
        before, after = getattr(checkpoint, group), getattr(loaded, group)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[n][k], after[n][k]) for n in before for k in before[n])
    first = next(iter(loaded.optimizers.values()))
    assert first["param_groups"][0]["lr"] == pytest.approx(checkpoint.spec.training.lr_g)


def test_sampling_nets_take_the_ema_weights_and_are_in_eval_mode(checkpoint: Checkpoint) -> None:
    nets = load_sampling_nets(save_checkpoint(checkpoint))
    assert nets and all(not net.training for net in nets.values())
    for name, net in nets.items():
        source = checkpoint.ema.get(name, checkpoint.nets[name])
        assert all(torch.equal(t, source[k]) for k, t in net.state_dict().items()), name
    assert any(name in checkpoint.ema for name in nets)


def test_a_checkpoint_of_another_family_is_refused() -> None:
    data = save_checkpoint(_checkpoint("joint-gan"))
    with pytest.raises(InvalidInput, match="this is a 'joint-gan' checkpoint, not a 'spade' one"):
        load_checkpoint(data, family="spade")


def test_format_1_checkpoint_of_the_first_joint_gan_still_loads_and_samples_the_same_pixels() -> None:
    """tests/training/fixtures/joint-gan-v1.pt was written by medsynth before generator families
    (lsgan, 3 steps); the samples beside it were drawn from it by that version's sampler."""
    loaded = load_checkpoint((FIXTURES / "joint-gan-v1.pt").read_bytes(), family="joint-gan")
    assert loaded.step == 3 and loaded.spec.options.loss.value == "lsgan"
    assert loaded.spec.options.fake_masks.value == "softmax" and loaded.spec.options.critic_norm.value == "batch"
    assert set(loaded.nets) == {"generator", "discriminator"} and set(loaded.ema) == {"generator"}
    spec = loaded.spec
    net = spec.family.sampling_net(spec.options, spec.data, load_sampling_nets(loaded), SampleMode())
    images, masks = generate(net, 5, range(4))
    with np.load(FIXTURES / "joint-gan-v1-samples.npz") as old:
        assert images.tobytes() == old["images"].tobytes() and np.array_equal(masks, old["masks"])


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


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_unknown_format_version(checkpoint: Checkpoint, version: object) -> None:
    with pytest.raises(InvalidInput, match=f"unsupported checkpoint format_version {version!r}"):
        load_checkpoint(_resave(checkpoint, format_version=version))


def test_unknown_family_and_state_version(checkpoint: Checkpoint) -> None:
    spec = checkpoint.spec.to_dict()
    with pytest.raises(InvalidInput, match="unknown generator family 'image-only'"):
        load_checkpoint(_resave(checkpoint, family="image-only", spec={**spec, "family": "image-only",
                                                                       "options": {**spec["options"], "family": "image-only"}}))
    with pytest.raises(InvalidInput, match="state_version 99"):
        load_checkpoint(_resave(checkpoint, state_version=99))


def test_invalid_spec_inside(checkpoint: Checkpoint) -> None:
    spec = checkpoint.spec.to_dict()
    spec["training"]["batch_size"] = 0
    with pytest.raises(InvalidInput, match="corrupt checkpoint: its spec is invalid: .*batch_size"):
        load_checkpoint(_resave(checkpoint, spec=spec))


def test_missing_key(checkpoint: Checkpoint) -> None:
    raw = _raw(save_checkpoint(checkpoint))
    del raw["ema"]
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(InvalidInput, match="missing \\['ema'\\]"):
        load_checkpoint(buffer.getvalue())


def test_mismatched_weights(checkpoint: Checkpoint) -> None:
    name = next(iter(checkpoint.ema))
    wrong = {**checkpoint.ema, name: {k: v[..., :1] if v.ndim else v for k, v in checkpoint.ema[name].items()}}
    with pytest.raises(InvalidInput, match="do not fit"):
        load_sampling_nets(_resave(checkpoint, ema=wrong))


def test_non_pickle_object_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": 2, "evil": object()}, buffer)  # not loadable with weights_only
    with pytest.raises(InvalidInput, match="^corrupt checkpoint: "):
        load_checkpoint(buffer.getvalue())
