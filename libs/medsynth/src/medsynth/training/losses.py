"""Adversarial losses, as pure functions of discriminator logits (means over the batch).

========  ===========================================  =============================
loss      discriminator                                generator
========  ===========================================  =============================
bce       softplus(-D(x)) + softplus(D(G(z)))          softplus(-D(G(z)))  (non-saturating)
lsgan     ½(D(x) - 1)² + ½ D(G(z))²                     ½(D(G(z)) - 1)²
hinge     relu(1 - D(x)) + relu(1 + D(G(z)))            -D(G(z))
========  ===========================================  =============================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsynth.core.errors import InvalidInput
from medsynth.models.gan import GanLoss


def discriminator_loss(kind: GanLoss, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Scalar loss the discriminator minimises, given its logits on real and on fake samples."""
    if kind is GanLoss.bce:
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind is GanLoss.lsgan:
        return 0.5 * ((real_logits - 1) ** 2).mean() + 0.5 * (fake_logits**2).mean()
    if kind is GanLoss.hinge:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise InvalidInput(f"unknown GAN loss {kind!r}.")


def generator_loss(kind: GanLoss, fake_logits: torch.Tensor) -> torch.Tensor:
    """Scalar loss the generator minimises, given the discriminator's logits on its samples."""
    if kind is GanLoss.bce:
        return F.softplus(-fake_logits).mean()
    if kind is GanLoss.lsgan:
        return 0.5 * ((fake_logits - 1) ** 2).mean()
    if kind is GanLoss.hinge:
        return -fake_logits.mean()
    raise InvalidInput(f"unknown GAN loss {kind!r}.")
