"""A visual Turing test's numbers (seed 000): how well readers tell synthetic images from real ones.

Synthetic is the "positive" class: sensitivity is the share of synthetic images called synthetic,
specificity the share of real images called real, accuracy the share called right. Each comes with
an exact (Clopper-Pearson) binomial interval. Readers at chance (accuracy about 0.5, intervals
holding 0.5) could not tell the images apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medsynth.core.errors import InvalidInput

LABELS = ("real", "synthetic")


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided binomial interval for ``successes`` out of ``trials``."""
    from scipy.stats import beta

    if trials < 0 or not 0 <= successes <= trials:
        raise InvalidInput(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def _rate(successes: int, trials: int) -> dict[str, Any]:
    low, high = clopper_pearson(successes, trials)
    return {"value": successes / trials if trials else None, "ci_low": low if trials else None,
            "ci_high": high if trials else None, "successes": successes, "n": trials}


def reader_performance(answers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``answers``: (truth, answer) pairs, each ``"real"`` or ``"synthetic"``."""
    pairs = list(answers)
    for truth, answer in pairs:
        if truth not in LABELS or answer not in LABELS:
            raise InvalidInput(f"truth and answer must be 'real' or 'synthetic', got {truth!r} and {answer!r}")
    synthetic = [a for t, a in pairs if t == "synthetic"]
    real = [a for t, a in pairs if t == "real"]
    return {
        "answers": len(pairs),
        "accuracy": _rate(sum(t == a for t, a in pairs), len(pairs)),
        "sensitivity": _rate(sum(a == "synthetic" for a in synthetic), len(synthetic)),
        "specificity": _rate(sum(a == "real" for a in real), len(real)),
    }
