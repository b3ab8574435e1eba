"""Study statistics against worked examples (Demšar 2006; hand-computed cases) and scipy."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats

from medsynth.core.errors import InvalidInput
from medsynth.metrics.statistics import (
    average_ranks,
    bootstrap_over_seeds_and_patients,
    cd_diagram_svg,
    friedman_nemenyi,
    holm,
    nemenyi_critical_difference,
    paired_comparisons,
    rank_correlation,
    wilcoxon_signed_rank,
)


def test_holm_by_hand() -> None:
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, held at 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_wilcoxon_by_hand() -> None:
    # differences 1.5, -0.5, 2, 3, -1, 4: ranks of |d| 3, 1, 4, 5, 2, 6 -> W- = 3, W+ = 18; exactly:
    # 5 of the 64 sign patterns have a rank sum <= 3, so p = 2 * 5 / 64
    a = np.array([11.5, 9.5, 12.0, 13.0, 9.0, 14.0])
    b = np.full(6, 10.0)
    result = wilcoxon_signed_rank(a, b)
    assert result["statistic"] == 3.0 and result["p"] == pytest.approx(10 / 64) and result["n"] == 6
    none_left = wilcoxon_signed_rank([1.0, 2.0, np.nan], [1.0, 2.0, 5.0])  # no difference left: no test, and it says so
    assert none_left["p"] is None and "no pair differs" in none_left["refused"]


def test_paired_comparisons_correct_for_the_number_of_tests() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 30)
    arms = {"real": base, "mixed": base + rng.normal(0.03, 0.01, 30), "synthetic": base - rng.normal(0.1, 0.02, 30)}
    rows = paired_comparisons(arms)
    assert [(r["a"], r["b"]) for r in rows] == [("real", "mixed"), ("real", "synthetic"), ("mixed", "synthetic")]
    raw = [stats.wilcoxon(arms[r["a"]], arms[r["b"]]).pvalue for r in rows]
    assert [r["p"] for r in rows] == pytest.approx(raw)
    assert [r["p_holm"] for r in rows] == pytest.approx(holm(raw))
    with pytest.raises(InvalidInput, match="at least two arms"):
        paired_comparisons({"real": base})
    with pytest.raises(InvalidInput, match="same test patients"):
        paired_comparisons({"real": base, "mixed": base[:10]})


def test_nemenyi_critical_values_of_demsar_2006() -> None:
    # Demšar (2006), Table 5(a): q_0.05 for k = 2..5 and 10; his worked example: k = 4, N = 14 -> CD = 1.25
    for k, q in {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 10: 3.164}.items():
        assert nemenyi_critical_difference(k, 6) / np.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=1e-3)
    assert nemenyi_critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)


def test_friedman_by_hand_and_against_scipy() -> None:
    # three blocks ranking three methods 1-2-3, 1-2-3, 2-1-3: average ranks 4/3, 5/3, 3;
    # chi2_F = 12N/(k(k+1)) * (sum R^2 - k(k+1)^2/4) = 3 * (122/9 - 12) = 14/3; F_F = 2 * chi2 / (6 - chi2) = 7
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.2], [0.5, 0.55, 0.3]])
    result = friedman_nemenyi(scores, ["a", "b", "c"])
    assert result["average_ranks"] == pytest.approx({"a": 4 / 3, "b": 5 / 3, "c": 3.0})
    assert result["statistic"] == pytest.approx(14 / 3) and result["iman_davenport_f"] == pytest.approx(7.0)
    assert result["p_chi2"] == pytest.approx(stats.friedmanchisquare(*scores.T).pvalue)
    # the p that decides at three blocks is the exact one (7/36, see test_metrics_statistics_exact.py), not chi2's 0.097
    assert result["decided_by"] == "exact" and result["p"] == pytest.approx(7 / 36)
    assert result["critical_difference"] == pytest.approx(nemenyi_critical_difference(3, 3))
    # lower is better (FID): the ranks flip
    assert average_ranks(scores, higher_is_better=False) == pytest.approx([8 / 3, 7 / 3, 1.0])


def test_friedman_groups_and_the_cd_diagram() -> None:
    rng = np.random.default_rng(1)
    blocks = 12
    scores = np.column_stack([rng.normal(m, 0.02, blocks) for m in (0.80, 0.79, 0.60, 0.40)])
    result = friedman_nemenyi(scores, ["spade", "joint-gan", "stylegan2", "diffusion"])
    assert result["p"] < 0.01 and result["p_iman_davenport"] < 0.01
    assert ["spade", "joint-gan"] in result["groups"]  # 0.01 apart: not distinguishable
    assert not any({"spade", "diffusion"} <= set(g) for g in result["groups"])
    svg = cd_diagram_svg(result)
    root = ET.fromstring(svg)
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for name in result["average_ranks"]:
        assert name in text
    assert f"CD = {result['critical_difference']:.2f}" in text
    with pytest.raises(InvalidInput, match="at least 3 methods"):
        friedman_nemenyi(scores[:, :2], ["a", "b"])


def test_rank_correlation_by_hand() -> None:
    # ranks differ by -1, 1, -1, 1, 0: rho = 1 - 6 * 4 / (5 * 24) = 0.8
    result = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result["rho"] == pytest.approx(0.8) and result["n"] == 5


def test_two_level_bootstrap() -> None:
    flat = np.full((3, 20), 0.7)
    summary = bootstrap_over_seeds_and_patients(flat)
    assert summary["mean"] == pytest.approx(0.7) and summary["ci_low"] == pytest.approx(0.7) == summary["ci_high"]
    rng = np.random.default_rng(0)
    patients = rng.uniform(0.5, 0.9, 40)
    same_seeds = np.tile(patients, (3, 1))
    spread_seeds = same_seeds + np.array([[-0.1], [0.0], [0.1]])  # seeds disagree: a wider interval
    a, b = bootstrap_over_seeds_and_patients(same_seeds, seed=1), bootstrap_over_seeds_and_patients(spread_seeds, seed=1)
    assert a["ci_low"] < a["mean"] < a["ci_high"] and b["mean"] == pytest.approx(a["mean"])
    assert (b["ci_high"] - b["ci_low"]) > 1.5 * (a["ci_high"] - a["ci_low"])
    assert bootstrap_over_seeds_and_patients(spread_seeds, seed=1) == b  # deterministic for a seed
    assert (b["n_seeds"], b["n_patients"]) == (3, 40)
