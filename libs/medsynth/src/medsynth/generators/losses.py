"""Adversarial losses and regularisers, as pure functions of critic outputs (means over the batch).

========  ===========================================  =============================
loss      discriminator / critic                       generator
========  ===========================================  =============================
bce       softplus(-D(x)) + softplus(D(G(z)))          softplus(-D(G(z)))  (non-saturating)
lsgan     ½(D(x) - 1)² + ½ D(G(z))²                     ½(D(G(z)) - 1)²
hinge     relu(1 - D(x)) + relu(1 + D(G(z)))            -D(G(z))
wgan      -D(x) + D(G(z))                              -D(G(z))
========  ===========================================  =============================

WGAN-GP uses the wgan losses plus :func:`gradient_penalty`; StyleGAN2 uses bce plus :func:`r1_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F

from medsynth.core.errors import InvalidInput


class AdversarialLoss(str, Enum):
    bce = "bce"        # DCGAN
    lsgan = "lsgan"    # least squares
    hinge = "hinge"
    wgan = "wgan"      # Wasserstein: weight clipping or gradient penalty keeps the critic Lipschitz


def discriminator_loss(kind: AdversarialLoss, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Scalar loss the discriminator minimises, given its outputs on real and on fake samples."""
    kind = AdversarialLoss(kind)
    if kind is AdversarialLoss.bce:
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind is AdversarialLoss.lsgan:
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if kind is AdversarialLoss.hinge:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind is AdversarialLoss.wgan:
        return fake.mean() - real.mean()
    raise InvalidInput(f"unknown adversarial loss {kind!r}.")  # pragma: no cover - enum is closed


def generator_loss(kind: AdversarialLoss, fake: torch.Tensor) -> torch.Tensor:
    """Scalar loss the generator minimises, given the discriminator's outputs on its samples."""
    kind = AdversarialLoss(kind)
    if kind is AdversarialLoss.bce:
        return F.softplus(-fake).mean()
    if kind is AdversarialLoss.lsgan:
        return 0.5 * ((fake - 1) ** 2).mean()
    if kind in (AdversarialLoss.hinge, AdversarialLoss.wgan):
        return -fake.mean()
    raise InvalidInput(f"unknown adversarial loss {kind!r}.")  # pragma: no cover


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     epsilon: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``E[(‖∇D(x̂)‖₂ − 1)²]`` at ``x̂ = ε·real + (1 − ε)·fake``.

    Args:
        critic: maps a batch to one score per sample.
        epsilon: ``(B, 1, 1, 1)`` interpolation weights in [0, 1].

    Returns:
        The penalty (without its weight λ), differentiable in the critic's parameters.
    """
    mixed = (epsilon * real.detach() + (1 - epsilon) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(real_scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E[‖∇ₓD(x)‖²]`` on real samples (``real`` must require grad and
    ``real_scores`` be computed from it). Without the ``γ/2`` factor."""
    (grad,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
