"""Adversarial losses and regularisers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medsynth.generators.losses import AdversarialLoss, discriminator_loss, generator_loss, gradient_penalty, r1_penalty

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(
    ("kind", "d_expected", "g_expected"),
    [
        # softplus(-real) + softplus(fake), means
        ("bce", (_softplus(-2) + _softplus(1)) / 2 + (_softplus(0.5) + _softplus(-3)) / 2, (_softplus(-0.5) + _softplus(3)) / 2),
        # ½(real-1)² + ½ fake²: ½·(1 + 4)/2 + ½·(0.25 + 9)/2 ; generator ½(fake-1)²: ½·(0.25 + 16)/2
        ("lsgan", 0.5 * 2.5 + 0.5 * 4.625, 0.5 * 8.125),
        # relu(1-real) + relu(1+fake): (0 + 2)/2 + (1.5 + 0)/2 ; generator -mean(fake) = 1.25
        ("hinge", 1.0 + 0.75, 1.25),
        # mean(fake) - mean(real) = -1.25 - 0.5
        ("wgan", -1.75, 1.25),
    ],
)
def test_losses_match_hand_computed_values(kind: str, d_expected: float, g_expected: float) -> None:
    assert discriminator_loss(AdversarialLoss(kind), REAL, FAKE).item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_loss(AdversarialLoss(kind), FAKE).item() == pytest.approx(g_expected, rel=1e-6)


def test_gradient_penalty_of_a_linear_critic_is_known_in_closed_form() -> None:
    """D(x) = w·x + b has ∇D = w everywhere, so the penalty is (‖w‖₂ − 1)² whatever the interpolation."""
    w = torch.tensor([3.0, 4.0, 0.0, 12.0])  # ‖w‖ = 13
    critic = lambda x: x.flatten(1) @ w + 0.5  # noqa: E731
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    eps = torch.rand(5, 1, 1, 1)
    assert gradient_penalty(critic, real, fake, eps).item() == pytest.approx((13 - 1) ** 2)
    unit = lambda x: x.flatten(1) @ (w / 13)  # noqa: E731
    assert gradient_penalty(unit, real, fake, eps).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_taken_at_the_interpolate_and_is_differentiable() -> None:
    """D(x) = ½‖x‖²: ∇D(x̂) = x̂, so the penalty is mean((‖x̂‖ − 1)²) at x̂ = ε·real + (1−ε)·fake."""
    real, fake = torch.full((2, 1, 1, 2), 2.0), torch.zeros(2, 1, 1, 2)
    eps = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)
    scale = torch.tensor(1.0, requires_grad=True)
    critic = lambda x: 0.5 * scale * x.flatten(1).pow(2).sum(1)  # noqa: E731
    # x̂ = (1, 1) → ‖x̂‖ = √2 ; x̂ = (2, 2) → ‖x̂‖ = 2√2
    expected = ((math.sqrt(2) - 1) ** 2 + (2 * math.sqrt(2) - 1) ** 2) / 2
    penalty = gradient_penalty(critic, real, fake, eps)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    assert scale.grad is not None and scale.grad.item() != 0


def test_r1_on_a_quadratic_discriminator() -> None:
    """D(x) = ½‖x‖² per sample: ∇ₓD = x, so R1 = mean ‖x‖²."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(2, 1, 1, 2).requires_grad_(True)
    scores = 0.5 * x.flatten(1).pow(2).sum(1)
    assert r1_penalty(scores, x).item() == pytest.approx((5.0 + 10.0) / 2)
