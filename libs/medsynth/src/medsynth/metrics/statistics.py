"""Statistics for comparing arms of a study (seed 001's analysis, seed 000's FID-versus-Dice question).

- ``bootstrap_over_seeds_and_patients``: a mean over a seeds × test-patients table with a two-level
  percentile bootstrap (seeds resampled, then patients), so the interval holds both sources of spread.
- ``paired_comparisons``: Wilcoxon signed-rank tests between arms on the same test patients, with
  Holm's step-down correction for the number of tests (``holm``).
- ``friedman_nemenyi``: the Friedman test across methods ranked within blocks (datasets, seeds), the
  average ranks, and the Nemenyi critical difference (Demšar, JMLR 2006); ``cd_diagram_svg`` draws it.
- ``rank_correlation``: Spearman's rho between two scores over generators (e.g. FID and Dice).

Pure functions over arrays; scipy does the distributions. Every result names its test and its n.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput


def _finite_table(values: Any, name: str) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2 or 0 in table.shape:
        raise InvalidInput(f"{name} should be a non-empty 2-D table, got shape {table.shape}.")
    return table


def bootstrap_over_seeds_and_patients(
    table: Any, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, float | int]:
    """Mean of a ``(seeds, patients)`` table (NaN cells ignored) with a two-level percentile bootstrap:
    each replicate draws seeds with replacement, then patients with replacement, and averages.

    Returns ``{"mean", "ci_low", "ci_high", "n_seeds", "n_patients", "ci_level", "n_boot"}``.
    """
    table = _finite_table(table, "the seeds × patients table")
    if not 0.0 < ci < 1.0:
        raise InvalidInput(f"ci must lie strictly between 0 and 1, got {ci}.")
    if n_boot < 1:
        raise InvalidInput(f"n_boot must be a positive integer, got {n_boot}.")
    n_seeds, n_patients = table.shape
    out: dict[str, float | int] = {"n_seeds": n_seeds, "n_patients": n_patients, "ci_level": ci, "n_boot": n_boot}
    if np.isnan(table).all():
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), **out}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n_patients, n_patients)
        sample = table[np.ix_(rows, cols)]
        means[b] = np.nan if np.isnan(sample).all() else np.nanmean(sample)
    lo, hi = np.nanquantile(means, [(1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0])
    return {"mean": float(np.nanmean(table)), "ci_low": float(lo), "ci_high": float(hi), **out}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise InvalidInput(f"p-values should be a list of numbers in [0, 1], got {list(p_values)}.")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values (pairs with a NaN dropped; zero
    differences handled by Wilcoxon's method, scipy's default)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInput(f"paired values should be two lists of one length, got {x.shape} and {y.shape}.")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    if len(d) < 2 or np.all(d == 0):
        return {"test": "wilcoxon signed-rank", "n": int(len(d)), "statistic": float("nan"), "p": 1.0,
                "median_difference": float(np.median(d)) if len(d) else float("nan")}
    result = stats.wilcoxon(x, y)
    return {"test": "wilcoxon signed-rank", "n": int(len(d)), "statistic": float(result.statistic),
            "p": float(result.pvalue), "median_difference": float(np.median(d))}


def paired_comparisons(per_patient: Mapping[str, Sequence[float]], pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank tests between arms scored on the same test patients (``arm → values in
    one patient order``), every pair unless ``pairs`` names them, with Holm-adjusted p-values."""
    arms = list(per_patient)
    if len(arms) < 2:
        raise InvalidInput(f"a paired comparison needs at least two arms, got {arms}.")
    lengths = {arm: len(per_patient[arm]) for arm in arms}
    if len(set(lengths.values())) != 1:
        raise InvalidInput(f"every arm should be scored on the same test patients, got counts {lengths}.")
    if pairs is None:
        pairs = [(arms[i], arms[j]) for i in range(len(arms)) for j in range(i + 1, len(arms))]
    unknown = sorted({arm for pair in pairs for arm in pair} - set(arms))
    if unknown:
        raise InvalidInput(f"comparisons name arms that were not scored: {unknown}.")
    rows = [{"a": a, "b": b, **wilcoxon_signed_rank(per_patient[a], per_patient[b])} for a, b in pairs]
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def average_ranks(scores: Any, *, higher_is_better: bool = True) -> np.ndarray:
    """Average rank of each method (columns) over blocks (rows); rank 1 is the best, ties share."""
    from scipy.stats import rankdata

    table = _finite_table(scores, "the blocks × methods table")
    if np.isnan(table).any():
        raise InvalidInput("the blocks × methods table has missing scores; drop the block or the method first.")
    ranks = rankdata(-table if higher_is_better else table, axis=1)
    return ranks.mean(axis=0)


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks for ``k`` methods over ``n`` blocks:
    q_alpha · sqrt(k(k+1) / 6n), q_alpha the studentized range quantile over sqrt(2)."""
    from scipy.stats import studentized_range

    if k < 2 or n < 1:
        raise InvalidInput(f"Nemenyi needs at least 2 methods and 1 block, got k={k}, n={n}.")
    q = studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def friedman_nemenyi(scores: Any, methods: Sequence[str], *, higher_is_better: bool = True, alpha: float = 0.05) -> dict[str, Any]:
    """Friedman's test over a ``(blocks, methods)`` table, the average ranks and the Nemenyi critical
    difference; ``groups`` lists the sets of methods no two of which differ by the CD (the diagram's bars)."""
    from scipy.stats import friedmanchisquare

    table = _finite_table(scores, "the blocks × methods table")
    n, k = table.shape
    if k != len(methods):
        raise InvalidInput(f"{k} columns of scores but {len(methods)} method names.")
    if k < 3 or n < 2:
        raise InvalidInput(f"the Friedman test needs at least 3 methods and 2 blocks, got {k} methods over {n} blocks.")
    ranks = average_ranks(table, higher_is_better=higher_is_better)
    statistic, p = friedmanchisquare(*table.T)
    iman_davenport = (n - 1) * statistic / (n * (k - 1) - statistic) if n * (k - 1) != statistic else float("inf")
    cd = nemenyi_critical_difference(k, n, alpha)
    order = np.argsort(ranks, kind="stable")
    groups: list[list[str]] = []
    for i in range(k):  # maximal runs of consecutive ranks within the CD
        j = i
        while j + 1 < k and ranks[order[j + 1]] - ranks[order[i]] <= cd:
            j += 1
        run = [methods[o] for o in order[i:j + 1]]
        if len(run) > 1 and not any(set(run) <= set(g) for g in groups):
            groups.append(run)
    return {"test": "friedman", "n_blocks": n, "n_methods": k, "statistic": float(statistic), "p": float(p),
            "iman_davenport_f": float(iman_davenport), "alpha": alpha, "critical_difference": cd,
            "average_ranks": {methods[i]: float(ranks[i]) for i in range(k)}, "groups": groups}


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho between two scores over the same items (e.g. generators' FID and Dice)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise InvalidInput(f"rank correlation needs two lists of one length, at least 3, got {a.shape} and {b.shape}.")
    result = spearmanr(a, b)
    return {"test": "spearman", "n": int(len(a)), "rho": float(result.statistic), "p": float(result.pvalue)}


def cd_diagram_svg(result: Mapping[str, Any], *, width: int = 640) -> str:
    """Demšar's critical-difference diagram of a :func:`friedman_nemenyi` result as inline SVG: an
    axis of average ranks (1 on the left, the best), each method's rank marked and named, the CD as a
    bar above the axis, and a thick line joining methods that do not differ significantly."""
    ranks: dict[str, float] = dict(result["average_ranks"])
    k, cd = len(ranks), float(result["critical_difference"])
    margin, top = 170, 60  # room for the names left and right of the axis
    scale = (width - 2 * margin) / max(k - 1, 1)
    x = lambda r: margin + (r - 1) * scale  # noqa: E731
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    half = (k + 1) // 2
    height = top + 30 + 18 * half + 12 * len(result["groups"]) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<line x1="{x(1)}" y1="{top}" x2="{x(k)}" y2="{top}" stroke="black"/>']
    for r in range(1, k + 1):
        parts.append(f'<line x1="{x(r)}" y1="{top - 5}" x2="{x(r)}" y2="{top}" stroke="black"/>'
                     f'<text x="{x(r)}" y="{top - 8}" text-anchor="middle">{r}</text>')
    parts.append(f'<line x1="{x(1)}" y1="20" x2="{x(1) + cd * scale}" y2="20" stroke="black" stroke-width="2"/>'
                 f'<text x="{x(1) + cd * scale / 2}" y="14" text-anchor="middle">CD = {cd:.2f}</text>')
    for i, (name, rank) in enumerate(ordered):
        left = i < half
        row = i if left else k - 1 - i
        y = top + 30 + 18 * row
        end = margin - 5 if left else width - margin + 5
        parts.append(f'<polyline points="{x(rank)},{top} {x(rank)},{y} {end},{y}" fill="none" stroke="black"/>'
                     f'<text x="{end - 3 if left else end + 3}" y="{y + 4}" text-anchor="{"end" if left else "start"}">'
                     f'{escape(name)} ({rank:.2f})</text>')
    for g, group in enumerate(result["groups"]):
        lo, hi = min(ranks[m] for m in group), max(ranks[m] for m in group)
        y = top + 8 + 6 * g
        parts.append(f'<line x1="{x(lo) - 3}" y1="{y}" x2="{x(hi) + 3}" y2="{y}" stroke="black" stroke-width="4"/>')
    parts.append("</svg>")
    return "".join(parts)
