"""Batch-norm statistics of the EMA networks, estimated with the EMA weights themselves.

Why: a BatchNorm layer's ``running_mean``/``running_var`` are statistics of its *input*, which the
weights upstream of it produce. During training PyTorch tracks them for the raw network (momentum 0.1,
the last few dozen steps' weights, normalised with batch statistics); the EMA copy has different
(averaged) weights, so the raw network's statistics — copied, or averaged along with the weights —
normalise the EMA network's activations with the wrong mean and scale. In eval mode the error compounds
layer by layer (issue 22: SPADE's generated masks scored Dice 0.000). The only statistics that fit the
EMA weights are those of the EMA network's own activations, so they are re-estimated.

How (:func:`recompute_batch_norm`): the network runs in **eval mode**, exactly as it samples, and the
layers are estimated one at a time in the order the forward pass reaches them. When layer ``k`` is
estimated, every layer before it already normalises with its new statistics, so its input has exactly
the distribution it will have at sampling time; its running mean and (unbiased) variance are set to the
mean and variance of that input over all batches, pooled per channel in float64. This is the fixed
point "every layer normalises its sampling-time input with that input's own statistics". (Train-mode
re-estimation — "precise BN", SWA's ``update_bn`` — feeds later layers batch-normalised inputs instead,
which differ from what they see at sampling time; the difference shrinks with the batch size.) It costs
one pass over the batches per layer, and only networks with batch norm pay it.

What the inputs are is the family's business, through the existing seam: the loop
(:func:`medsynth.training.loop.recompute_ema_batch_norm`) runs the family's own
:class:`~medsynth.generators.base.SamplingNet` of every sampling mode over the EMA networks, with
standard-normal noise of its ``noise_shapes`` — the distribution the generic sampler draws from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Samples each layer's statistics are estimated from, in batches of BATCH (in eval mode a sample's
# activations do not depend on its batch mates, so the batch size is a matter of speed only).
SAMPLES = 1024
BATCH = 64


def batch_norm_layers(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """The batch-norm layers with running statistics inside ``modules`` (each once, in module order)."""
    seen: dict[int, _BatchNorm] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None:
                seen.setdefault(id(m), m)
    return list(seen.values())


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the layer being estimated has seen its input."""


@torch.no_grad()
def recompute_batch_norm(
    forwards: Sequence[Callable[[int, int], object]], layers: Sequence[_BatchNorm], batches: int
) -> list[_BatchNorm]:
    """Set the running statistics of ``layers`` to those of their inputs under ``forwards``.

    Args:
        forwards: input sources, e.g. one per sampling mode: ``forwards[k](i, n)`` runs batch ``i`` of
            source ``k``, of ``n`` samples, through the network(s), whose modules must be in eval mode;
            it must run the same batch every time it is called with the same ``i`` and ``n``. A first,
            small probe batch of every source finds the layers it reaches; the estimates use batches
            of :data:`BATCH`.
        layers: the batch-norm layers to estimate (others reached are left alone).
        batches: batches each layer's statistics pool, spread evenly over the sources that reach it.

    Returns:
        The layers no source reaches; their statistics are left as they were.
    """
    targets = list(layers)
    calls: list[dict[_BatchNorm, int]] = [{} for _ in forwards]  # calls of each layer in one pass of each source
    order: list[_BatchNorm] = []
    for k, forward in enumerate(forwards):
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], counts: dict = calls[k]) -> None:
            counts[module] = counts.get(module, 0) + 1
            if module not in order:
                order.append(module)  # type: ignore[arg-type]

        handles = [m.register_forward_pre_hook(record) for m in targets]
        try:
            forward(0, 2)
        finally:
            for handle in handles:
                handle.remove()
    for layer in order:  # upstream layers first: each sees its final, sampling-time input
        sources = [(forwards[k], calls[k][layer]) for k in range(len(forwards)) if layer in calls[k]]
        _estimate(layer, sources, batches)
    return [m for m in targets if m not in order]


def _estimate(layer: _BatchNorm, sources: list[tuple[Callable[[int, int], object], int]], batches: int) -> None:
    moments: list[torch.Tensor] = []  # per channel: count, sum, sum of squares (float64)
    seen = [0]
    expected = [0]

    def accumulate(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().to(torch.float64)
        x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N·spatial)
        batch = torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(dim=1), (x * x).sum(dim=1)])
        if moments:
            moments[0] += batch
        else:
            moments.append(batch)

    def stop_when_done(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[0] += 1
        if seen[0] == expected[0]:
            raise _Stop  # the rest of the pass cannot change this layer's input

    handles = [layer.register_forward_pre_hook(accumulate), layer.register_forward_hook(stop_when_done)]
    try:
        for j in range(max(batches, len(sources))):
            forward, expected[0] = sources[j % len(sources)]
            seen[0] = 0
            try:
                forward(j // len(sources), BATCH)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    count, total, squares = moments[0]
    mean = total / count
    var = (squares - total * mean) / (count - 1).clamp(min=1)  # unbiased, as BatchNorm keeps it
    layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
    layer.running_var.copy_(var.clamp(min=0).to(layer.running_var.dtype))
    if layer.num_batches_tracked is not None:
        layer.num_batches_tracked.fill_(max(batches, len(sources)))
