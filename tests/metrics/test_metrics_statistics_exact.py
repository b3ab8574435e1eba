"""The study statistics at the sizes studies have (issue 22, item 3), each pinned to an independent
implementation at small and at large n: scipy's exact and permutation tests, scikit-posthocs (Friedman's
Nemenyi), statsmodels' mixed model (the pooled seeds × patients test), and hand-computed values; and the
refusals: a test asked to decide on too few cases gives no number and says why."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from medsynth.metrics.statistics import (
    MIN_SEEDS,
    friedman_nemenyi,
    holm,
    paired_over_seeds,
    rank_correlation,
    two_level_paired_test,
    wilcoxon_signed_rank,
)

# ---------------------------------------------------------------------------------------------- Spearman


def _rho(a, b, axis=-1):
    """Spearman's rho along ``axis`` (vectorized for scipy's permutation_test): Pearson's r of the mid-ranks."""
    ra, rb = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
    ra, rb = ra - ra.mean(axis=axis, keepdims=True), rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))


def _scipy_exact_spearman(x, y) -> float:
    """scipy's permutation test of Spearman's rho over every pairing: one sample (y) whose order is permuted
    against x held fixed, n_resamples=inf: all n! orders."""
    x = np.asarray(x, float)
    return float(stats.permutation_test((np.asarray(y, float),), lambda b, axis=-1: _rho(np.broadcast_to(x, b.shape), b, axis=axis),
                                        permutation_type="pairings", n_resamples=np.inf, vectorized=True).pvalue)


def test_spearman_refuses_below_the_n_it_can_decide_at() -> None:
    # the issue: at n = 3 scipy's t-approximation says p = 0.0 for a perfect ranking; exactly, the smallest
    # two-sided p is 2/3! = 1/3, at n = 4 2/4! = 1/12 — neither can reach 0.05: no p, a reason
    assert stats.spearmanr([1, 2, 3], [1, 2, 3]).pvalue == 0.0  # what the old code reported
    for n, smallest in ((3, 1 / 3), (4, 1 / 12)):
        result = rank_correlation(list(range(n)), list(range(n)))
        assert result["rho"] == pytest.approx(1.0) and result["p"] is None
        assert result["min_attainable_p"] == pytest.approx(smallest)
        assert f"{smallest:.3g}" in result["refused"] and "cannot decide" in result["refused"]
    # n = 5 can: a perfect ranking has p = 2/5! exactly
    assert rank_correlation(range(5), range(5))["p"] == pytest.approx(2 / 120)
    assert rank_correlation(range(5), range(5)[::-1])["p"] == pytest.approx(2 / 120)
    # fewer than 3 pairs (a NaN pair dropped), a score that does not vary: refused with a reason, never a number
    short = rank_correlation([1.0, 2.0, np.nan], [3.0, 1.0, 2.0])
    assert short["p"] is None and short["n"] == 2 and short["n_dropped"] == 1 and "at least 3" in short["refused"]
    flat = rank_correlation([1, 2, 3, 4, 5, 6], [0.5] * 6)
    assert flat["p"] is None and flat["rho"] is None and "one value" in flat["refused"]


def test_spearman_by_hand() -> None:
    # [1..5] against [2, 1, 4, 3, 5]: sum d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8. Permutations at least as
    # concordant: sum d^2 = 0 (1), 2 (the 4 adjacent swaps), 4 (the 3 pairs of disjoint adjacent swaps): 8 of
    # 120; two-sided (the distribution is symmetric) 16/120
    result = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result["rho"] == pytest.approx(0.8) and result["p"] == pytest.approx(16 / 120)
    assert result["p_method"].startswith("exact")


@pytest.mark.parametrize("n", [5, 6, 7, 8])
def test_spearman_exact_matches_scipy_permutation_test(n: int) -> None:
    rng = np.random.default_rng(n)
    for ties in (False, True):
        x = rng.normal(size=n)
        y = x + rng.normal(0, 1.0, n)
        if ties:  # rounding makes tied values in both scores
            x, y = np.round(x * 1.5), np.round(y * 1.5)
            if len(set(x)) == 1 or len(set(y)) == 1:
                continue
        result = rank_correlation(x, y)
        assert result["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        if result["p"] is not None:
            assert result["p"] == pytest.approx(_scipy_exact_spearman(x, y), abs=1e-12)
        else:
            assert result["min_attainable_p"] > 0.05


def test_spearman_at_nine_enumerates_every_pairing() -> None:
    x = np.array([3.1, 1.2, 5.5, 4.4, 2.0, 9.9, 7.7, 6.1, 8.0])
    y = np.array([2.0, 1.0, 4.5, 3.0, 4.5, 8.0, 9.0, 5.0, 6.0])  # a tie in y
    result = rank_correlation(x, y)
    assert result["p_method"] == "exact permutation (362880 pairings)"
    assert result["p"] == pytest.approx(_scipy_exact_spearman(x, y), abs=1e-12)


def test_spearman_at_large_n_agrees_with_scipy() -> None:
    # n = 40: Monte Carlo permutation (20,000 pairings, fixed seed): within Monte Carlo error of scipy's
    # permutation test (200,000 pairings) and of the t-approximation, which is good at this n
    rng = np.random.default_rng(7)
    x = rng.normal(size=40)
    y = 0.3 * x + rng.normal(size=40)
    result = rank_correlation(x, y)
    assert result["p_method"].startswith("Monte Carlo") and result["n_resamples"] == 20_000
    assert result["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    reference = stats.permutation_test((y,), lambda b, axis=-1: _rho(np.broadcast_to(x, b.shape), b, axis=axis),
                                       permutation_type="pairings", vectorized=True, n_resamples=200_000,
                                       rng=np.random.default_rng(1)).pvalue
    # p about 0.4, so the Monte Carlo standard error of 20,000 pairings is about 0.006: within 3.5 of them
    assert result["p"] == pytest.approx(reference, abs=0.02)
    assert result["p"] == pytest.approx(stats.spearmanr(x, y).pvalue, abs=0.02)
    assert rank_correlation(x, y) == result  # seeded: the same data, the same p
    perfect = rank_correlation(np.arange(40), np.arange(40))
    assert perfect["p"] == pytest.approx(2 / 20_001) and perfect["p"] > 0  # never 0.0: the resolution of 20,000 pairings


# ---------------------------------------------------------------------------------------------- Friedman


def _friedman_chi2(*samples, axis=-1):
    """Friedman's chi2 (tie-corrected), vectorized over leading axes, for scipy's permutation_test."""
    x = np.moveaxis(np.stack(samples, axis=0), axis if axis < 0 else axis + 1, -1)  # (k, ..., N)
    ranks = stats.rankdata(x, axis=0)
    k, n = x.shape[0], x.shape[-1]
    column = ranks.sum(axis=-1)
    group = (ranks[:, None] == ranks[None, :]).sum(axis=1)  # for each value, how many in its block share its rank
    ties = (group ** 2 - 1).sum(axis=(0, -1))  # sum over tie groups of t^3 - t, over blocks
    chi2 = 12.0 / (n * k * (k + 1)) * (column ** 2).sum(axis=0) - 3.0 * n * (k + 1)
    return chi2 / (1.0 - ties / (n * k * (k * k - 1)))


def _scipy_exact_friedman(table: np.ndarray) -> float:
    """Exact permutation p of Friedman's chi2 by scipy: permutation_type='samples' shuffles each block's
    values among the k methods; n_resamples=inf enumerates all (k!)^N."""
    return float(stats.permutation_test(tuple(table.T), _friedman_chi2, permutation_type="samples", n_resamples=np.inf,
                                        alternative="greater", vectorized=True).pvalue)


def test_friedman_the_issues_case_by_hand() -> None:
    # three blocks ranking three families 1-2-3, 1-2-3, 2-1-3 (the hippocampus study's pattern): average ranks
    # 4/3, 5/3, 3, chi2_F = 14/3. chi2 on 2 df: p = exp(-7/3) = 0.097. Iman-Davenport F = 2 chi2 / (6 - chi2) = 7
    # on (2, 4) df: p = (1 + 2 * 7 / 4)^-2 = 4/81 = 0.049. Exactly (Friedman's table, k = 3, N = 3:
    # P(chi2 >= 4.667) = 42/216): 7/36 = 0.194 — and the exact p decides.
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.5, 0.55, 0.3]])
    result = friedman_nemenyi(scores, ["a", "b", "c"])
    assert result["statistic"] == pytest.approx(14 / 3)
    assert result["p_chi2"] == pytest.approx(math.exp(-7 / 3)) and round(result["p_chi2"], 3) == 0.097
    assert result["iman_davenport_f"] == pytest.approx(7.0) and result["iman_davenport_df"] == [2, 4]
    assert result["p_iman_davenport"] == pytest.approx(4 / 81) and round(result["p_iman_davenport"], 3) == 0.049
    assert result["p_exact"] == pytest.approx(7 / 36) and round(result["p_exact"], 3) == 0.194
    assert result["decided_by"] == "exact" and result["p"] == result["p_exact"] and "refused" not in result
    assert result["min_attainable_p"] == pytest.approx(6 / 216)  # every block alike: 1/36, below 0.05
    assert result["p_exact"] == pytest.approx(_scipy_exact_friedman(scores), abs=1e-12)


def test_friedman_refuses_below_the_blocks_it_can_decide_at() -> None:
    # three methods over two blocks: even two blocks ranking alike have p = 6/36 = 1/6 > 0.05
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2]])
    result = friedman_nemenyi(scores, ["a", "b", "c"])
    assert result["p"] is None and result["min_attainable_p"] == pytest.approx(1 / 6)
    assert "cannot decide" in result["refused"] and "0.167" in result["refused"]
    assert result["statistic"] == pytest.approx(4.0) and result["average_ranks"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    # four methods over two blocks can (1/24 < 0.05); one block cannot; all ties cannot
    assert friedman_nemenyi(np.array([[4, 3, 2, 1], [8, 7, 6, 5.0]]), list("abcd"))["p"] == pytest.approx(1 / 24)
    assert friedman_nemenyi(np.array([[4, 3, 2, 1.0]]), list("abcd"))["p"] is None
    tied = friedman_nemenyi(np.full((4, 3), 0.5), list("abc"))
    assert tied["p"] is None and "ties all" in tied["refused"] and tied["statistic"] is None


@pytest.mark.parametrize(("n", "k"), [(3, 3), (4, 3), (3, 4), (2, 5)])
def test_friedman_exact_matches_scipy_permutation_test(n: int, k: int) -> None:
    rng = np.random.default_rng(10 * n + k)
    for table in (rng.normal(size=(n, k)), np.round(rng.normal(size=(n, k)))):  # the second with ties
        result = friedman_nemenyi(table, [str(i) for i in range(k)])
        if result["statistic"] is None:
            continue
        assert result["statistic"] == pytest.approx(stats.friedmanchisquare(*table.T).statistic)
        assert result["p_chi2"] == pytest.approx(stats.friedmanchisquare(*table.T).pvalue)
        assert result["p_exact"] == pytest.approx(_scipy_exact_friedman(table), abs=1e-9)


def test_friedman_monte_carlo_and_iman_davenport_beyond_enumeration() -> None:
    rng = np.random.default_rng(5)
    # six methods over six blocks: 720^6 rankings, too many to enumerate; few blocks: a permutation p decides
    table = rng.normal(size=(6, 6)) + np.linspace(0, 0.8, 6)
    result = friedman_nemenyi(table, [str(i) for i in range(6)])
    assert result["decided_by"] == "permutation" and result["p_exact"] is None and result["n_resamples"] == 20_000
    reference = stats.permutation_test(tuple(table.T), _friedman_chi2, permutation_type="samples", n_resamples=20_000,
                                       alternative="greater", vectorized=True, rng=np.random.default_rng(3)).pvalue
    assert result["p"] == pytest.approx(reference, abs=0.012)
    assert friedman_nemenyi(table, [str(i) for i in range(6)]) == result  # a fixed seed: the same p
    # forty blocks: Iman-Davenport decides; its F and p from scipy's chi2 by the formula
    table = rng.normal(size=(40, 6)) + np.linspace(0, 0.4, 6)
    result = friedman_nemenyi(table, [str(i) for i in range(6)])
    chi2 = stats.friedmanchisquare(*table.T).statistic
    f = 39 * chi2 / (40 * 5 - chi2)
    assert result["decided_by"] == "iman-davenport" and result["iman_davenport_f"] == pytest.approx(f)
    assert result["p"] == pytest.approx(stats.f.sf(f, 5, 5 * 39)) and result["p_chi2"] == pytest.approx(stats.friedmanchisquare(*table.T).pvalue)


@pytest.mark.parametrize(("n", "k"), [(3, 3), (5, 4), (30, 5)])
def test_nemenyi_against_scikit_posthocs(n: int, k: int) -> None:
    import scikit_posthocs as sp  # the tools lock
    rng = np.random.default_rng(n * k)
    table = rng.normal(size=(n, k)) + np.linspace(0, 1.0, k)
    methods = [f"m{i}" for i in range(k)]
    result = friedman_nemenyi(table, methods)
    reference = sp.posthoc_nemenyi_friedman(table)  # blocks as rows, groups as columns 0..k-1
    for row in result["nemenyi"]:
        i, j = methods.index(row["a"]), methods.index(row["b"])
        assert row["p"] == pytest.approx(float(reference.iloc[i, j]), rel=1e-9, abs=1e-12)
        # the CD diagram's reading: two methods within the CD are not told apart at alpha (Nemenyi p >= alpha)
        apart = abs(result["average_ranks"][row["a"]] - result["average_ranks"][row["b"]]) > result["critical_difference"]
        assert apart == (float(reference.iloc[i, j]) < 0.05)


# ---------------------------------------------------------------------------------------------- Wilcoxon


def _brute_force_wilcoxon(d: np.ndarray) -> float:
    """Two-sided p over every sign assignment of the non-zero differences (an independent enumeration)."""
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = np.array([ranks[list(signs)].sum() for signs in itertools.product([False, True], repeat=len(d))
                     for signs in [np.array(signs)]])
    return min(1.0, 2 * min((sums >= observed - 1e-9).mean(), (sums <= observed + 1e-9).mean()))


@pytest.mark.parametrize("n", [6, 8, 12, 20, 50])
def test_wilcoxon_exact_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = rng.uniform(0.5, 0.9, n), rng.uniform(0.5, 0.9, n)
    result = wilcoxon_signed_rank(a, b)
    reference = stats.wilcoxon(a, b, method="exact")
    assert result["statistic"] == pytest.approx(reference.statistic) and result["p"] == pytest.approx(reference.pvalue, rel=1e-9)


def test_wilcoxon_with_ties_and_zeros_matches_enumeration_and_scipy() -> None:
    d = np.array([0.0, 0.02, -0.02, 0.05, 0.05, 0.05, -0.01, 0.03, 0.0, 0.04, -0.03, 0.06])  # zeros dropped, |d| tied
    result = wilcoxon_signed_rank(d, np.zeros_like(d))
    assert result["n"] == 12 and result["n_nonzero"] == 10
    assert result["p"] == pytest.approx(_brute_force_wilcoxon(d), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf))
    assert result["p"] == pytest.approx(reference.pvalue, abs=1e-12) and result["statistic"] == pytest.approx(reference.statistic)


def test_wilcoxon_refuses_below_six_pairs_and_approximates_past_four_hundred() -> None:
    five = wilcoxon_signed_rank([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])  # all five positive: exactly p = 2/32 = 0.0625
    assert five["p"] is None and "2/2^5 = 0.0625" in five["refused"]
    six = wilcoxon_signed_rank([1, 2, 3, 4, 5, 6], [0] * 6)
    assert six["p"] == pytest.approx(2 / 64) == stats.wilcoxon([1, 2, 3, 4, 5, 6]).pvalue
    rng = np.random.default_rng(0)
    d = rng.normal(0.05, 1.0, 600)
    big = wilcoxon_signed_rank(d, np.zeros(600))
    assert big["p_method"].startswith("normal") and big["p"] == pytest.approx(stats.wilcoxon(d, method="approx").pvalue)
    mid = rng.normal(0.1, 1.0, 300)  # exact up to 400 pairs: agrees with the normal approximation at this n
    assert wilcoxon_signed_rank(mid, np.zeros(300))["p"] == pytest.approx(stats.wilcoxon(mid, method="approx").pvalue, abs=2e-3)


def test_holm_leaves_refused_tests_out_of_the_family() -> None:
    assert holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])
    assert holm([None, None]) == [None, None] and holm([]) == []


# ------------------------------------------------------------------------------ seeds × patients, pooled


def test_pooled_test_with_no_patient_component_is_a_t_test_on_seed_means() -> None:
    # d[s, p] = a[s] + e[s, p] with every patient's mean over seeds equal (MS_patient = 0): the pooled
    # test's variance is MS_seed / SP, Hillis's df S - 1: a one-sample t-test of the seed means
    rng = np.random.default_rng(2)
    e = rng.normal(0, 0.02, (4, 10))
    e -= e.mean(axis=0, keepdims=True)
    d = np.array([[0.03], [0.01], [0.05], [-0.01]]) + e
    result = two_level_paired_test(d)
    reference = stats.ttest_1samp(d.mean(axis=1), 0.0)
    assert result["mean_squares"]["patient"] == pytest.approx(0.0, abs=1e-15)
    assert result["statistic"] == pytest.approx(reference.statistic) and result["df"] == pytest.approx(3.0)
    assert result["p"] == pytest.approx(reference.pvalue)


def test_pooled_test_matches_a_mixed_model_fitted_by_statsmodels() -> None:
    # crossed random effects for seeds and patients, fitted by REML (statsmodels): in a balanced design its
    # variance components are the ANOVA ones, and its standard error of the mean difference is ours
    import pandas as pd  # the tools lock
    import statsmodels.formula.api as sm
    rng = np.random.default_rng(3)
    s, n = 4, 15
    d = 0.02 + rng.normal(0, 0.03, (s, 1)) + rng.normal(0, 0.05, (1, n)) + rng.normal(0, 0.02, (s, n))
    result = two_level_paired_test(d)
    frame = pd.DataFrame({"y": d.ravel(), "seed": np.repeat(np.arange(s), n), "patient": np.tile(np.arange(n), s), "g": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.mixedlm("y ~ 1", frame, groups="g", vc_formula={"patient": "0 + C(patient)", "seed": "0 + C(seed)"}).fit(reml=True)
    assert fit.fe_params.iloc[0] == pytest.approx(result["mean_difference"])
    assert fit.bse.iloc[0] == pytest.approx(result["se"], rel=1e-3)
    components = result["variance_components"]
    assert list(fit.vcomp) == pytest.approx([components["patient"], components["seed"]], rel=1e-3)
    assert fit.scale == pytest.approx(components["residual"], rel=1e-3)


def test_a_run_effect_is_not_counted_once_per_patient() -> None:
    # three seeds; the arm is better than real data in each run's patients, by a run-dependent amount that
    # averages near zero: each seed's Wilcoxon is tiny, the pooled test is not — the spread between runs counts
    rng = np.random.default_rng(4)
    real = rng.uniform(0.6, 0.9, (3, 30))
    arm = real + np.array([[0.06], [-0.05], [0.01]]) + rng.normal(0, 0.005, (3, 30))
    result = paired_over_seeds(arm, real, [0, 1, 2])
    assert all(t["p"] < 1e-4 for t in result["per_seed"])
    assert result["decided_by"].startswith("pooled") and result["p"] == result["pooled"]["p"] > 0.5
    assert result["pooled"]["df"] == pytest.approx(2.0, abs=0.1)
    # the per-seed tests are scipy's, seed by seed
    for i, test in enumerate(result["per_seed"]):
        assert test["p"] == pytest.approx(stats.wilcoxon(arm[i], real[i], method="exact").pvalue)
    assert len(result["warnings"]) == 1 and f"fewer than {MIN_SEEDS}" in result["warnings"][0]


def test_pooled_over_seeds_bad_input() -> None:
    rng = np.random.default_rng(6)
    real = rng.uniform(0.6, 0.9, (5, 12))
    arm = real + 0.02 + rng.normal(0, 0.01, (5, 12))
    five = paired_over_seeds(arm, real, list(range(5)))
    assert five["warnings"] == [] and five["p"] is not None and five["n_seeds"] == 5 and five["n"] == 12
    # one seed: the spread between runs cannot be estimated; that seed's Wilcoxon decides, with warnings
    one = paired_over_seeds(arm[:1], real[:1], [7])
    assert one["pooled"]["p"] is None and "cannot be estimated" in one["pooled"]["refused"]
    assert one["decided_by"] == "Wilcoxon signed-rank, seed 7 only" and one["p"] == one["per_seed"][0]["p"]
    assert any("conditional on that training run" in w for w in one["warnings"])
    # one seed and five patients: nothing can decide, and the row says why
    few = paired_over_seeds(arm[:1, :5], real[:1, :5], [7])
    assert few["p"] is None and "cannot decide" in few["refused"]
    # no common seed; identical arms; a patient missing in one seed is dropped from the pooled test
    none = paired_over_seeds(np.empty((0, 12)), np.empty((0, 12)), [])
    assert none["p"] is None and "no seed" in none["refused"]
    same = paired_over_seeds(real, real, list(range(5)))
    assert same["p"] is None and all("no pair differs" in t["refused"] for t in same["per_seed"])
    holed = arm.copy()
    holed[2, 3] = np.nan
    assert paired_over_seeds(holed, real, list(range(5)))["pooled"]["n_patients_dropped"] == 1
