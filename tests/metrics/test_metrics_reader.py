"""Reader-study numbers against hand-counted cases and published exact binomial intervals."""

from __future__ import annotations

import pytest

from medsynth.core.errors import InvalidInput
from medsynth.metrics.reader import clopper_pearson, reader_performance


def test_clopper_pearson_published_values() -> None:
    # the exact intervals R gives (binom.test(7, 10): 0.3475-0.9333; binom.test(0, 10): 0-0.3085)
    assert clopper_pearson(7, 10) == pytest.approx((0.3475, 0.9333), abs=1e-4)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.3085), abs=1e-4)
    assert clopper_pearson(10, 10) == pytest.approx((0.6915, 1.0), abs=1e-4)
    with pytest.raises(InvalidInput):
        clopper_pearson(11, 10)


def test_sensitivity_specificity_accuracy_by_hand() -> None:
    # 4 synthetic images, 3 called synthetic; 6 real, 2 called real: accuracy 5 / 10
    answers = [("synthetic", "synthetic")] * 3 + [("synthetic", "real")] + [("real", "real")] * 2 + [("real", "synthetic")] * 4
    result = reader_performance(answers)
    assert result["sensitivity"]["value"] == 0.75 and result["sensitivity"]["n"] == 4
    assert result["specificity"]["value"] == pytest.approx(2 / 6) and result["specificity"]["n"] == 6
    assert result["accuracy"]["value"] == 0.5 and result["accuracy"]["ci_low"] < 0.5 < result["accuracy"]["ci_high"]
    with pytest.raises(InvalidInput, match="'real' or 'synthetic'"):
        reader_performance([("real", "maybe")])
