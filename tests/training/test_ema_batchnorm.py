"""EMA generators with batch norm (issue 22, item 2): the batch-norm statistics a checkpoint's EMA
networks sample with are those of the EMA networks' own activations, not the raw network's copied.

Measured independently of the loop: the exported sampling nets run in eval mode, exactly as a cohort
is drawn, on fresh noise from the generic sampler; hooks on every batch-norm layer take the per-channel
mean and variance of its input, which the layer's running statistics must match."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from medsynth.generators.base import SampleMode, prepare_data
from medsynth.generators.checkpoint import Checkpoint, load_sampling_nets
from medsynth.sampling.generate import sample_noise
from medsynth.store.local import LocalStore
from medsynth.training.loop import recompute_ema_batch_norm, restore_state, snapshot, train_generator

from training_data import same_weights, tiny_spec

# The families whose EMA networks hold batch norm: the joint GAN's DCGAN generator and SPADE's mask generator.
FAMILIES = ["joint-gan", "spade"]
SAMPLES = 2048


def _activation_statistics(checkpoint: Checkpoint) -> list[tuple[str, _BatchNorm, torch.Tensor, torch.Tensor]]:
    """``(name, layer, mean, var)`` of every batch-norm layer's input, over SAMPLES fresh samples of
    every sampling mode, run in eval mode as sampling runs them."""
    spec = checkpoint.spec
    nets = load_sampling_nets(checkpoint)
    layers = {
        f"{net_name}.{name}": m for net_name, net in nets.items() for name, m in net.named_modules() if isinstance(m, _BatchNorm)
    }
    assert layers, f"{spec.options.family}'s sampling nets hold no batch norm"
    moments: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def collect(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
            moments.setdefault(name, []).append(torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])]))
        return collect

    for source in spec.family.mask_sources_for(spec.options):
        net = spec.family.sampling_net(spec.options, spec.data, nets, SampleMode(mask_source=source))
        assert not net.training
        # a probe finds the layers this mode reaches; the measured pass ends after the last of them
        # (the rest of the net, e.g. SPADE's image generator, cannot change their inputs)
        reached: list[torch.nn.Module] = []
        probes = [m.register_forward_pre_hook(lambda m, a: reached.append(m)) for m in layers.values()]
        try:
            with torch.no_grad():
                net(sample_noise(1, range(2), net.noise_shapes), torch.zeros(2, dtype=torch.int64))
        finally:
            for probe in probes:
                probe.remove()
        if not reached:
            continue
        handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
        handles.append(reached[-1].register_forward_hook(_stop_after(reached.count(reached[-1]))))
        try:
            with torch.no_grad(), pytest.raises(_Done):
                net(sample_noise(20240601, range(SAMPLES), net.noise_shapes), torch.zeros(SAMPLES, dtype=torch.int64))
        finally:
            for handle in handles:
                handle.remove()
    out = []
    for name, layer in layers.items():
        total, squares, count = torch.stack(moments[name]).sum(0)
        mean = total / count
        out.append((name, layer, mean, squares / count - mean**2))
    return out


class _Done(Exception):
    pass


def _stop_after(calls: int):
    seen = []

    def stop(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append(1)
        if len(seen) == calls:
            raise _Done

    return stop


def _mismatch(checkpoint: Checkpoint) -> dict[str, tuple[float, float]]:
    """Per layer: the largest ``|running_mean - mean| / sd`` and ``|log(running_var / var)|`` over channels."""
    out = {}
    for name, layer, mean, var in _activation_statistics(checkpoint):
        sd = var.sqrt()
        shift = ((layer.running_mean.double() - mean).abs() / sd).max().item()
        scale = (layer.running_var.double() / var).log().abs().max().item()
        out[name] = (shift, scale)
    return out


def _train(spec, data, tmp_path, prefix: str = "run/"):
    return train_generator(spec, *data, store=LocalStore(tmp_path), prefix=prefix)


@pytest.mark.parametrize("family", FAMILIES)
def test_ema_batch_norm_statistics_are_those_of_the_ema_network(family: str, data, tmp_path) -> None:
    spec = tiny_spec(family, training={"steps": 10, "checkpoint_every": 5, "ema_decay": 0.999})
    result = _train(spec, data, tmp_path)
    ema, raw = result.checkpoint.ema, result.checkpoint.nets
    for name in ema:  # the EMA weights really are not the raw ones
        assert any(not torch.equal(ema[name][k], raw[name][k]) for k in ema[name] if k.endswith("weight")), name

    mismatch = _mismatch(result.checkpoint)
    # 1024 samples estimate each layer; the check draws 2048 others: Monte Carlo error is a few percent
    # of a standard deviation. The raw statistics copied before the fix were off by factors of 40 to
    # 50 000 in variance.
    bad = {name: m for name, m in mismatch.items() if m[0] > 0.1 or m[1] > 0.1}
    assert not bad, f"EMA batch-norm statistics do not fit the EMA network's activations: {bad}"


def test_statistics_do_not_depend_on_what_the_ema_copy_held(data, tmp_path) -> None:
    """The estimate is a function of the EMA weights, spec and step: garbage statistics in the EMA
    copy (or the raw network's) give the same checkpoint, and a resumed run stays bit-exact."""
    spec = tiny_spec("joint-gan", training={"steps": 3})
    result = _train(spec, data, tmp_path)
    images, masks = data
    state, curves = restore_state(spec, prepare_data(images, masks, spec.data, torch.device("cpu")), result.checkpoint)
    with torch.no_grad():
        for net in state.ema.values():
            for m in net.modules():
                if isinstance(m, _BatchNorm):
                    m.running_mean.normal_()
                    m.running_var.uniform_(5, 10)
                    m.num_batches_tracked.fill_(99)
    assert not same_weights(snapshot(state, spec, 3, curves), result.checkpoint)
    recompute_ema_batch_norm(state, spec, 3)
    assert same_weights(snapshot(state, spec, 3, curves), result.checkpoint)
    assert all(m.training for net in state.nets.values() for m in net.modules())  # raw nets left in train mode
    assert not any(m.training for net in state.ema.values() for m in net.modules())


def test_disabled_ema_keeps_the_raw_network_statistics(data, tmp_path) -> None:
    result = _train(tiny_spec("joint-gan", training={"steps": 3, "ema_decay": 0.0}), data, tmp_path)
    ema, raw = result.checkpoint.ema["generator"], result.checkpoint.nets["generator"]
    assert all(torch.equal(ema[k], raw[k]) for k in raw)
    assert np.isfinite([v.float().sum().item() for v in ema.values()]).all()
