"""Statistics for comparing arms of a study (seed 001's analysis, seed 000's FID-versus-Dice question),
built to hold at the sizes studies have (3-5 seeds, a handful of families, tens of test patients).

- ``bootstrap_over_seeds_and_patients``: a mean over a seeds × test-patients table with a two-level
  percentile bootstrap (seeds resampled, then patients), so the interval holds both sources of spread.
- ``wilcoxon_signed_rank``: the two-sided signed-rank test of paired values with its exact null
  distribution (ties and zeros as scipy's default, Wilcoxon's method); ``paired_comparisons`` runs it
  between arms with Holm's step-down correction (``holm``).
- ``two_level_paired_test`` / ``paired_over_seeds``: one arm against another over seeds × patients:
  Wilcoxon per seed, and a pooled test that keeps seeds and patients as separate (crossed, random)
  levels, so that the spread between training runs counts (see ``two_level_paired_test``).
- ``friedman_nemenyi``: the Friedman test across methods ranked within blocks, with its exact
  permutation p-value where the (k!)^N within-block rankings can be enumerated, a Monte Carlo
  permutation p-value for other small N, the χ² and Iman–Davenport approximations, the statistic that
  decides named; average ranks and the Nemenyi critical difference (Demšar, JMLR 2006);
  ``cd_diagram_svg`` draws it.
- ``rank_correlation``: Spearman's rho with an exact permutation p-value for n <= 9, Monte Carlo beyond.

Every result names its test, its n and how its p was obtained (``p_method``). A test asked to decide on
too few cases does not return a number: its ``p`` is ``None`` and ``refused`` says why (e.g. at n = 3 the
smallest two-sided p Spearman's exact test can reach is 1/3, so no n = 3 correlation can be significant).
Pure functions over arrays; scipy does the distributions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from html import escape
from typing import Any

import numpy as np

from medsynth.core.errors import InvalidInput

#: The significance level a test is asked to decide at; below the n at which the smallest attainable p
#: exceeds it, a test refuses rather than report a p-value.
ALPHA = 0.05
#: A comparison resting on fewer seeds (training runs) than this carries a warning: the spread between
#: runs is then poorly estimated.
MIN_SEEDS = 5
#: Monte Carlo permutation tests: resamples and the seed of their generator (fixed: same data, same p).
N_RESAMPLES = 20_000
PERMUTATION_SEED = 0
#: Spearman: every one of the n! permutations is enumerated up to this n (9! = 362,880).
SPEARMAN_EXACT_MAX_N = 9
#: Friedman: the exact distribution is built while (states × within-block permutations) stays below this.
FRIEDMAN_EXACT_BUDGET = 4_000_000
#: Friedman: at or above this many blocks, when the exact distribution is out of reach, Iman–Davenport decides.
FRIEDMAN_LARGE_N = 10
#: Wilcoxon: the exact null distribution (a convolution over n ranks) up to this many non-zero pairs.
WILCOXON_EXACT_MAX_N = 400


def seed_warning(n_seeds: int, what: str = "this comparison") -> str | None:
    """The warning a result carries when it rests on fewer than :data:`MIN_SEEDS` seeds, else None."""
    if n_seeds >= MIN_SEEDS:
        return None
    return (f"{what} rests on {n_seeds} seed(s), fewer than {MIN_SEEDS}: the spread between training runs is "
            f"poorly estimated, so read its p-value as provisional.")


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


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given. A ``None`` (a test
    that refused) stays ``None`` and is not counted in the family: it made no decision."""
    if any(v is None for v in p_values):
        present = [i for i, v in enumerate(p_values) if v is not None]
        adjusted_present = holm([p_values[i] for i in present]) if present else []
        out: list[float | None] = [None] * len(p_values)
        for i, v in zip(present, adjusted_present):
            out[i] = v
        return out
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise InvalidInput(f"p-values should be a list of numbers in [0, 1], got {list(p_values)}.")
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _refusal(out: dict[str, Any], reason: str) -> dict[str, Any]:
    """A result that makes no decision: ``p`` is None and ``refused`` says why (never a p that looks valid and is not)."""
    return {**out, "p": None, "refused": reason}


def _wilcoxon_null(ranks2: np.ndarray) -> np.ndarray:
    """The exact null distribution of W+ (in doubled ranks, integers) over the 2^n sign assignments:
    entry w is P(W+ = w / 2). Ties enter through their mid-ranks."""
    dist = np.zeros(int(ranks2.sum()) + 1)
    dist[0] = 1.0
    for r in ranks2:
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[:len(dist) - r]
        dist = 0.5 * (dist + shifted)
    return dist


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values: pairs with a NaN dropped, zero differences
    dropped (Wilcoxon's method, scipy's default), tied |differences| given mid-ranks.

    The p-value is exact: twice the smaller tail of W+ over all 2^n equally likely sign assignments
    (computed by convolution, so ties are exact too); above :data:`WILCOXON_EXACT_MAX_N` non-zero pairs,
    the normal approximation with tie correction. ``statistic`` is min(W+, W-), as scipy reports it.
    Refuses (``p`` None, ``refused`` a reason) when no pair differs, or when even the most extreme
    outcome could not reach ``alpha``: with n non-zero differences the smallest two-sided p is 2/2^n,
    so n <= 5 cannot decide at 0.05.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInput(f"paired values should be two lists of one length, got {x.shape} and {y.shape}.")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = (x - y)[keep]
    nonzero = d[d != 0]
    m = len(nonzero)
    out: dict[str, Any] = {"test": "wilcoxon signed-rank", "n": int(len(d)), "n_nonzero": m, "statistic": None,
                           "median_difference": float(np.median(d)) if len(d) else None, "alpha": alpha, "p_method": None}
    if m == 0:
        return _refusal(out, f"no pair differs ({len(d)} pair(s), every difference zero): nothing to rank")
    ranks = stats.rankdata(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    out["statistic"] = min(w_plus, float(ranks.sum()) - w_plus)
    min_p = min(1.0, 2.0 ** (1 - m))
    out["min_attainable_p"] = min_p
    if min_p > alpha:
        return _refusal(out, f"{m} non-zero difference(s): the smallest two-sided p an exact test can give is "
                             f"2/2^{m} = {min_p:.3g} > α = {alpha:g}, so it cannot decide")
    if m > WILCOXON_EXACT_MAX_N:
        result = stats.wilcoxon(nonzero, method="approx")
        return {**out, "p": float(result.pvalue), "p_method": f"normal approximation with tie correction ({m} pairs)"}
    ranks2 = np.rint(2 * ranks).astype(np.int64)
    dist = _wilcoxon_null(ranks2)
    w2 = int(ranks2[nonzero > 0].sum())
    p = min(1.0, 2.0 * min(dist[w2:].sum(), dist[:w2 + 1].sum()))
    return {**out, "p": float(p), "p_method": f"exact (all 2^{m} sign assignments)"}


def paired_comparisons(per_patient: Mapping[str, Sequence[float]], pairs: Sequence[tuple[str, str]] | None = None,
                       *, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank tests between arms scored on the same test patients (``arm → values in
    one patient order``), every pair unless ``pairs`` names them, with Holm-adjusted p-values (a test
    that refused keeps ``p_holm`` None and is left out of the family)."""
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
    rows = [{"a": a, "b": b, **wilcoxon_signed_rank(per_patient[a], per_patient[b], alpha=alpha)} for a, b in pairs]
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def two_level_paired_test(differences: Any) -> dict[str, Any]:
    """The mean of a ``(seeds, patients)`` table of paired differences (arm A minus arm B, the same seed
    and test patient) tested against zero with seeds and patients as crossed random levels.

    Model: d[s, p] = mu + a[s] + b[p] + e[s, p], a the training run's effect (seed × arm interaction),
    b the patient's, e the rest. The variance of the grand mean, sigma_a²/S + sigma_b²/P + sigma_e²/(SP),
    is estimated from the two-way ANOVA mean squares as (MS_seed + max(MS_patient - MS_residual, 0)) / SP
    and t = mean / se is referred to Student's t with Hillis's degrees of freedom,
    (MS_seed + max(MS_patient - MS_residual, 0))² / (MS_seed² / (S - 1)) — the Dorfman–Berbaum–Metz
    analysis of a readers × cases design (Hillis, Stat Med 2007), seeds in the readers' place. With few
    seeds the degrees of freedom are few and the test is, rightly, weak: a difference that one training
    run happened to produce is not counted S × P times. (Sign-flipping each (seed, patient) pair on its
    own would do exactly that; averaging over seeds first, too.)

    Patients without a value in every seed are dropped. Refuses with one seed (the spread between runs
    cannot be estimated), fewer than two patients, or differences with no spread to test against.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2:
        raise InvalidInput(f"the differences should be a (seeds, patients) table, got shape {d.shape}.")
    d = d[~np.isnan(d).all(axis=1)]
    complete = ~np.isnan(d).any(axis=0)
    d = d[:, complete]
    s, n = d.shape if d.size else (len(d), 0)
    out: dict[str, Any] = {"test": "two-level random-effects t (seeds × patients, Hillis df)", "n_seeds": int(s), "n_patients": int(n),
                           "n_patients_dropped": int((~complete).sum()), "mean_difference": float(d.mean()) if d.size else None,
                           "statistic": None, "df": None, "se": None, "p_method": None}
    if s < 2:
        return _refusal(out, f"{s} seed(s): the spread between training runs cannot be estimated from fewer than 2")
    if n < 2:
        return _refusal(out, f"{n} patient(s) scored in every seed: at least 2 are needed")
    grand = d.mean()
    seed_means, patient_means = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * ((seed_means - grand) ** 2).sum() / (s - 1)
    ms_patient = s * ((patient_means - grand) ** 2).sum() / (n - 1)
    residual = d - seed_means[:, None] - patient_means[None, :] + grand
    ms_residual = (residual ** 2).sum() / ((s - 1) * (n - 1))
    denominator = ms_seed + max(ms_patient - ms_residual, 0.0)
    out["variance_components"] = {"seed": float(max(ms_seed - ms_residual, 0.0) / n),
                                  "patient": float(max(ms_patient - ms_residual, 0.0) / s), "residual": float(ms_residual)}
    out["mean_squares"] = {"seed": float(ms_seed), "patient": float(ms_patient), "residual": float(ms_residual)}
    if not denominator > 1e-15 * max(1.0, grand * grand):
        return _refusal(out, "the differences do not vary between seeds (nor beyond chance between patients): "
                             "there is no spread to measure the mean difference against")
    se = math.sqrt(denominator / (s * n))
    df = math.inf if ms_seed == 0 else denominator ** 2 / (ms_seed ** 2 / (s - 1))
    t = grand / se
    p = 2.0 * (stats.norm.sf(abs(t)) if math.isinf(df) else stats.t.sf(abs(t), df))
    return {**out, "statistic": float(t), "df": float(df), "se": float(se), "p": float(min(1.0, p)),
            "p_method": f"Student's t on {df:.1f} df (Hillis)"}


def paired_over_seeds(a: Any, b: Any, seeds: Sequence[Any], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Arm ``a`` against arm ``b``, both ``(seeds, patients)`` tables of one metric aligned by seed (row)
    and test patient (column), NaN where a run has no value.

    ``per_seed``: a Wilcoxon signed-rank test over the patients of each seed on its own (seed s of ``a``
    against seed s of ``b``). ``pooled``: :func:`two_level_paired_test` of the differences. ``p`` is the
    p-value that decides: the pooled test's with two or more seeds, the only seed's Wilcoxon with one
    (conditional on that training run: ``warnings`` says so); None with ``refused`` when it refused.
    ``warnings`` holds :func:`seed_warning` below :data:`MIN_SEEDS` seeds.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or len(seeds) != len(x):
        raise InvalidInput(f"the two arms should be (seeds, patients) tables of one shape with a label per seed, "
                           f"got {x.shape}, {y.shape} and {len(seeds)} seeds.")
    d = x - y
    has = ~np.isnan(d).all(axis=1)
    seeds = [seed for seed, keep in zip(seeds, has) if keep]
    d, x, y = d[has], x[has], y[has]
    per_seed = [{"seed": seed, **wilcoxon_signed_rank(x[i], y[i], alpha=alpha)} for i, seed in enumerate(seeds)]
    pooled = two_level_paired_test(d)
    finite = d[~np.isnan(d)]
    out: dict[str, Any] = {"n_seeds": len(seeds), "n": pooled["n_patients"] if len(seeds) > 1 else (per_seed[0]["n"] if per_seed else 0),
                           "mean_difference": float(finite.mean()) if finite.size else None,
                           "median_difference": float(np.median(finite)) if finite.size else None,
                           "per_seed": per_seed, "pooled": pooled, "alpha": alpha, "warnings": []}
    warning = seed_warning(len(seeds))
    if warning:
        out["warnings"].append(warning)
    if not seeds:
        return _refusal({**out, "decided_by": None}, "no seed has both arms scored on a common test patient")
    if len(seeds) == 1:
        only = per_seed[0]
        out["warnings"].append(f"one seed ({seeds[0]}): the test is conditional on that training run; another run may differ")
        out["decided_by"] = f"Wilcoxon signed-rank, seed {seeds[0]} only"
        return _refusal(out, only["refused"]) if only["p"] is None else {**out, "p": only["p"], "p_method": only["p_method"]}
    out["decided_by"] = "pooled two-level test (seeds × patients)"
    if pooled["p"] is None:
        return _refusal(out, pooled["refused"])
    return {**out, "p": pooled["p"], "p_method": pooled["p_method"]}


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


def nemenyi_p_values(average: Sequence[float], n: int) -> np.ndarray:
    """Nemenyi's pairwise p-values from the average ranks over ``n`` blocks: the studentized range
    distribution (k means, infinite df) at |R_i - R_j| / sqrt(k(k+1) / 6n) · sqrt(2)."""
    from scipy.stats import studentized_range

    r = np.asarray(average, dtype=np.float64)
    k = len(r)
    q = np.abs(r[:, None] - r[None, :]) / math.sqrt(k * (k + 1) / (6.0 * n)) * math.sqrt(2.0)
    p = studentized_range.sf(q, k, np.inf)
    np.fill_diagonal(p, 1.0)
    return np.minimum(p, 1.0)


@lru_cache(maxsize=12)
def _permutations(n: int) -> np.ndarray:
    """All n! orderings of range(n), one a row."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)


def _friedman_exact(ranks2: np.ndarray, budget: int = FRIEDMAN_EXACT_BUDGET) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact null distribution of Σ_j R_j² (R_j the column sums of doubled within-block ranks) over
    every within-block permutation, equally likely under H0: (values, probabilities), or None when the
    state space would pass ``budget``. Column-sum vectors are coded as integers in base 2kN + 1 and
    convolved block by block."""
    n, k = ranks2.shape
    base = 2 * k * n + 1  # a column sum of doubled ranks is at most 2kN
    if k * math.log2(base) > 62 or math.factorial(k) > budget:
        return None
    powers = base ** np.arange(k, dtype=np.int64)
    perms = _permutations(k)
    codes, probs = np.zeros(1, dtype=np.int64), np.ones(1)
    for row in ranks2:
        block, counts = np.unique(row[perms] @ powers, return_counts=True)
        if len(codes) * len(block) > budget:
            return None
        merged = (codes[:, None] + block[None, :]).ravel()
        weights = (probs[:, None] * (counts / counts.sum())[None, :]).ravel()
        codes, inverse = np.unique(merged, return_inverse=True)
        probs = np.bincount(inverse.ravel(), weights=weights)
    sums = (codes[:, None] // powers[None, :]) % base
    values = (sums ** 2).sum(axis=1)
    order = np.argsort(values, kind="stable")
    values, probs = values[order], probs[order]
    unique, starts = np.unique(values, return_index=True)
    return unique, np.add.reduceat(probs, starts)


def _friedman_permutation(ranks2: np.ndarray, observed: int, n_resamples: int, seed: int) -> float:
    """Monte Carlo permutation p of Σ_j R_j² (upper tail), ranks shuffled within each block: (1 + b) / (1 + R)."""
    rng = np.random.default_rng(seed)
    n, k = ranks2.shape
    at_least, done = 0, 0
    chunk = max(1, min(n_resamples, 2_000_000 // (n * k)))
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        shuffled = rng.permuted(np.broadcast_to(ranks2, (size, n, k)), axis=2)
        stat = (shuffled.sum(axis=1) ** 2).sum(axis=1)
        at_least += int((stat >= observed).sum())
        done += size
    return (1 + at_least) / (1 + n_resamples)


def friedman_nemenyi(scores: Any, methods: Sequence[str], *, higher_is_better: bool = True, alpha: float = ALPHA,
                     n_resamples: int = N_RESAMPLES, seed: int = PERMUTATION_SEED) -> dict[str, Any]:
    """Friedman's test over a ``(blocks, methods)`` table, the average ranks and the Nemenyi critical
    difference; ``groups`` lists the sets of methods no two of which differ by the CD (the diagram's bars).

    Reported: ``statistic`` (χ²_F with the tie correction, as scipy) and ``p_chi2``; Iman–Davenport's
    F = (N-1)χ²/(N(k-1)-χ²) on (k-1, (k-1)(N-1)) df and ``p_iman_davenport``; ``p_exact``, the exact
    permutation p (every one of the (k!)^N within-block rankings, equally likely under H0) where that
    distribution can be built; else, for N < :data:`FRIEDMAN_LARGE_N`, ``p_permutation`` from
    ``n_resamples`` Monte Carlo within-block shuffles with a fixed ``seed``. ``p`` is the one that decides,
    ``decided_by`` names it: exact, else Monte Carlo permutation for small N, else Iman–Davenport (the
    χ² approximation is shown, never decides: it is conservative at small N). Refuses (``p`` None,
    ``refused``) when even the most extreme ranking could not reach ``alpha`` (three methods over two
    blocks: 1/6) or when every block ties every method. ``nemenyi`` holds the pairwise p-values.
    """
    from scipy import stats

    table = _finite_table(scores, "the blocks × methods table")
    n, k = table.shape
    if k != len(methods):
        raise InvalidInput(f"{k} columns of scores but {len(methods)} method names.")
    if k < 3:
        raise InvalidInput(f"the Friedman test needs at least 3 methods, got {k} methods over {n} blocks.")
    average = average_ranks(table, higher_is_better=higher_is_better)
    ranks = stats.rankdata(-table if higher_is_better else table, axis=1)
    ranks2 = np.rint(2 * ranks).astype(np.int64)
    column = ranks.sum(axis=0)
    ties = sum(float((c ** 3 - c).sum()) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    correction = 1.0 - ties / (n * k * (k * k - 1))
    cd = nemenyi_critical_difference(k, n, alpha)
    order = np.argsort(average, kind="stable")
    groups: list[list[str]] = []
    for i in range(k):  # maximal runs of consecutive ranks within the CD
        j = i
        while j + 1 < k and average[order[j + 1]] - average[order[i]] <= cd:
            j += 1
        run = [methods[o] for o in order[i:j + 1]]
        if len(run) > 1 and not any(set(run) <= set(g) for g in groups):
            groups.append(run)
    nemenyi = nemenyi_p_values(average, n)
    out: dict[str, Any] = {
        "test": "friedman", "n_blocks": n, "n_methods": k, "alpha": alpha, "statistic": None, "p_chi2": None,
        "iman_davenport_f": None, "iman_davenport_df": [k - 1, (k - 1) * (n - 1)], "p_iman_davenport": None,
        "p_exact": None, "p_permutation": None, "n_resamples": None, "decided_by": None, "p_method": None,
        "critical_difference": cd, "average_ranks": {methods[i]: float(average[i]) for i in range(k)}, "groups": groups,
        "nemenyi": [{"a": methods[i], "b": methods[j], "p": float(nemenyi[i, j])} for i in range(k) for j in range(i + 1, k)],
    }
    if correction <= 1e-12:
        return _refusal(out, f"every one of the {n} block(s) ties all {k} methods: there is no ranking to test")
    chi2 = (12.0 / (n * k * (k + 1)) * float((column ** 2).sum()) - 3.0 * n * (k + 1)) / correction
    chi2 = max(chi2, 0.0)
    out["statistic"] = chi2
    out["p_chi2"] = float(stats.chi2.sf(chi2, k - 1))
    if n > 1:
        gap = n * (k - 1) - chi2
        if gap > 1e-9 * n * k:
            f = (n - 1) * chi2 / gap
            out["iman_davenport_f"] = float(f)
            out["p_iman_davenport"] = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    observed = int((ranks2.sum(axis=0) ** 2).sum())
    exact = _friedman_exact(ranks2)
    if exact is not None:
        values, probs = exact
        out["p_exact"] = float(min(1.0, probs[values >= observed].sum()))
        min_p = float(probs[-1])
        out["min_attainable_p"] = min_p
        out["decided_by"], out["p"] = "exact", out["p_exact"]
        out["p_method"] = f"exact permutation distribution ((k!)^N = {math.factorial(k)}^{n} within-block rankings)"
        if min_p > alpha:
            return _refusal(out, f"{k} methods over {n} block(s): the smallest p the exact test can give is {min_p:.3g} "
                                 f"> α = {alpha:g} (every block ranking the methods alike), so it cannot decide")
        return out
    if n < FRIEDMAN_LARGE_N or out["p_iman_davenport"] is None:
        out["p_permutation"] = _friedman_permutation(ranks2, observed, n_resamples, seed)
        out["n_resamples"] = n_resamples
        out["decided_by"], out["p"] = "permutation", out["p_permutation"]
        out["p_method"] = f"Monte Carlo permutation ({n_resamples} within-block shuffles, seed {seed})"
        return out
    out["decided_by"], out["p"] = "iman-davenport", out["p_iman_davenport"]
    out["p_method"] = f"Iman–Davenport F on ({k - 1}, {(k - 1) * (n - 1)}) df"
    return out


def rank_correlation(x: Sequence[float], y: Sequence[float], *, alpha: float = ALPHA, n_resamples: int = N_RESAMPLES,
                     seed: int = PERMUTATION_SEED) -> dict[str, Any]:
    """Spearman's rho between two scores over the same items (e.g. generators' FID and Dice), ties as
    mid-ranks (rho is then Pearson's r of the ranks, as scipy), pairs with a NaN dropped.

    The two-sided p is a permutation p, twice the smaller tail (scipy's ``permutation_test`` convention):
    exact over all n! pairings for n <= :data:`SPEARMAN_EXACT_MAX_N`, else ``n_resamples`` Monte Carlo
    pairings with a fixed ``seed``, (1 + b) / (1 + R). Refuses (``p`` None, ``refused``) when even a
    perfect ranking could not reach ``alpha`` (n <= 4 without ties: at n = 3 the smallest p is 2/3! = 1/3,
    at n = 4 2/4! = 0.083), below 3 pairs, or when one score does not vary (rho undefined).
    """
    from scipy.stats import rankdata

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidInput(f"rank correlation needs two lists of one length, got {a.shape} and {b.shape}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(len(a))
    out: dict[str, Any] = {"test": "spearman", "n": n, "n_dropped": int((~keep).sum()), "rho": None, "alpha": alpha, "p_method": None}
    if n < 3:
        return _refusal(out, f"n = {n}: a rank correlation needs at least 3 pairs")
    rx, ry = np.rint(2 * rankdata(a)).astype(np.int64), np.rint(2 * rankdata(b)).astype(np.int64)
    if (rx == rx[0]).all() or (ry == ry[0]).all():
        return _refusal(out, f"{'the first' if (rx == rx[0]).all() else 'the second'} score takes one value over all "
                             f"{n} items: there is no ranking, so rho is undefined")
    cx, cy = rx - rx.mean(), ry - ry.mean()
    out["rho"] = float(np.clip((cx @ cy) / math.sqrt((cx @ cx) * (cy @ cy)), -1.0, 1.0))
    observed = int(rx @ ry)  # rho is increasing in Σ rx·ry for fixed rank multisets: compare integers
    if n <= SPEARMAN_EXACT_MAX_N:
        stat = ry[_permutations(n)] @ rx
        greater, less = float((stat >= observed).mean()), float((stat <= observed).mean())
        min_p = min(1.0, 2.0 * min(float((stat == stat.max()).mean()), float((stat == stat.min()).mean())))
        out["min_attainable_p"] = min_p
        out["p_method"] = f"exact permutation ({math.factorial(n)} pairings)"
        if min_p > alpha:
            return _refusal(out, f"n = {n}: the smallest two-sided p an exact test can give is {min_p:.3g} > α = {alpha:g} "
                                 f"(a perfect ranking), so it cannot decide")
        return {**out, "p": min(1.0, 2.0 * min(greater, less))}
    rng = np.random.default_rng(seed)
    greater = less = done = 0
    chunk = max(1, min(n_resamples, 2_000_000 // n))
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        stat = rng.permuted(np.broadcast_to(ry, (size, n)), axis=1) @ rx
        greater += int((stat >= observed).sum())
        less += int((stat <= observed).sum())
        done += size
    p = min(1.0, 2.0 * min((1 + greater) / (1 + n_resamples), (1 + less) / (1 + n_resamples)))
    return {**out, "p": p, "p_method": f"Monte Carlo permutation ({n_resamples} pairings, seed {seed})", "n_resamples": n_resamples}


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
