"""Equivalence for null results: the two one-sided tests and the power at the margin (whytune.stats), their reading
in comparisons.csv and results.md (whytune.eval.report), and the margin's way from the config to the report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy.optimize import minimize_scalar
from scipy.special import xlog1py, xlogy
from scipy.stats import norm
from statsmodels.stats.proportion import power_proportions_2indep, tost_proportions_2indep

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval import report
from whytune.eval.results import Entry, View
from whytune.runner import view
from whytune.stats import _restricted_mle, comparisons, equivalence_test, power_at_margin, rates

COND = "blackmail_explicit-america_replacement"


def _records(arm: str, harmful: int, n: int, condition: str = COND) -> list[dict]:
    return [{"arm": arm, "condition": condition, "seed": 0, "harmful": i < harmful} for i in range(n)]


def test_tost_of_two_zero_rates_by_hand():
    """0/32 against 0/32: under p1 - p2 = +-m the likeliest rates are m and 0, so each one-sided score test is
    z = -m / sqrt(m (1 - m) / 32 * 64 / 63) (Miettinen-Nurminen's n / (n - 1)), p = Phi(z)."""
    for margin, expected in ((0.10, 0.030684), (0.05, 0.098944)):
        z = -margin / math.sqrt(margin * (1 - margin) / 32 * 64 / 63)
        assert norm.cdf(z) == pytest.approx(expected, abs=1e-6)
        assert equivalence_test(0, 32, 0, 32, margin) == pytest.approx(norm.cdf(z), rel=1e-9)


@pytest.mark.parametrize(("k1", "n1", "n2", "margin"), [(30, 32, 32, 0.10), (12, 20, 20, 0.10), (3, 40, 25, 0.3)])
def test_tost_matches_statsmodels_where_its_cubic_is_right(k1, n1, n2, margin):
    """statsmodels' restricted MLE has k2 where n2 belongs (its issue 10269); with k2 = n2 the two coincide."""
    expected = tost_proportions_2indep(k1, n1, n2, n2, -margin, margin, method="score", compare="diff").pvalue
    assert equivalence_test(k1, n1, n2, n2, margin) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(0, 5, 1, 5), (0, 32, 4, 32), (1, 1, 0, 1), (2, 7, 150, 300)])
@pytest.mark.parametrize("delta", [-0.3, -0.1, 0.05, 0.3])
def test_restricted_rates_maximise_the_likelihood(k1, n1, k2, n2, delta):
    """Where statsmodels' own cubic returns nan or a rate that is not the maximum, ours is the maximum (checked by a
    bounded numerical search, its end points included)."""

    def loglik(p2: float) -> float:
        p1 = p2 + delta
        return float(xlogy(k1, p1) + xlog1py(n1 - k1, -p1) + xlogy(k2, p2) + xlog1py(n2 - k2, -p2))

    low, high = max(0.0, -delta), min(1.0, 1 - delta)
    found = minimize_scalar(lambda x: -loglik(x), bounds=(low, high), method="bounded", options={"xatol": 1e-12})
    p1, p2 = _restricted_mle(k1, n1, k2, n2, delta)
    assert p1 - p2 == pytest.approx(delta) and low <= p2 <= high
    assert loglik(p2) >= max(loglik(low), loglik(high), loglik(found.x)) - 1e-9


def test_tost_is_symmetric_and_defined_where_statsmodels_gives_nan():
    """statsmodels 0.15 returns nan for 0/32 against 4/32 (arccos of a ratio rounded past -1)."""
    assert equivalence_test(0, 32, 4, 32, 0.1) == pytest.approx(equivalence_test(4, 32, 0, 32, 0.1))
    assert 0.5 < equivalence_test(0, 32, 4, 32, 0.1) < 1  # 12.5 points apart: far from equivalent
    assert math.isnan(equivalence_test(0, 0, 1, 10, 0.1))
    with pytest.raises(ValueError):
        equivalence_test(0, 10, 0, 10, 0.0)


def test_power_at_the_margin():
    """statsmodels' z-test power for arm B's rate against that rate moved by the margin towards 50%."""
    assert power_at_margin(32, 0.0, 32, 0.10) == pytest.approx(0.449102, abs=1e-6)
    assert power_at_margin(32, 0.0, 32, 0.10) == pytest.approx(
        power_proportions_2indep(0.10, 0.0, 32, return_results=False)
    )
    assert power_at_margin(32, 0.9, 32, 0.10) == pytest.approx(
        power_proportions_2indep(-0.10, 0.9, 32, return_results=False)
    )
    assert power_at_margin(2000, 0.0005, 2000, 0.10) > 0.999
    assert math.isnan(power_at_margin(0, 0.1, 32, 0.10))


def _comparison(k_a: int, n_a: int, k_b: int, n_b: int, margin: float):
    (c,) = comparisons(rates(_records("baseline", k_b, n_b) + _records("demos", k_a, n_a)), margin=margin)
    return c


def test_two_zero_rates_at_32_are_not_shown_equivalent_within_5_points():
    c = _comparison(0, 32, 0, 32, margin=0.05)
    assert c.p_value == 1.0 and c.p_equivalence == pytest.approx(0.098944, abs=1e-6)
    assert c.power == pytest.approx(0.246298, abs=1e-6)  # low: a real 5-point difference would mostly go unseen
    assert report.equivalence_reading(c) == "not shown equivalent (TOST p=0.0989; power 25%)"


def test_two_zero_rates_at_32_are_equivalent_within_10_points():
    """At the default margin 32 samples suffice: a 10-point rate would give 0/32 only 0.9^32 = 3% of the time."""
    c = _comparison(0, 32, 0, 32, margin=0.10)
    assert report.equivalence_reading(c) == "equivalent within ±10 points (TOST p=0.0307)"
    assert report.equivalence_reading(_comparison(0, 16, 0, 16, margin=0.10)) == (
        "not shown equivalent (TOST p=0.0947; power 25%)"
    )


def test_large_arms_one_event_apart_are_equivalent():
    c = _comparison(1, 2000, 0, 2000, margin=0.10)
    assert c.p_value == 1.0 and c.p_equivalence < 1e-40 and c.power > 0.999
    assert report.equivalence_reading(c) == "equivalent within ±10 points (TOST p=<0.0001)"


def test_a_significant_comparison_has_no_reading():
    assert report.equivalence_reading(_comparison(0, 32, 20, 32, margin=0.10)) == "–"


def test_the_report_carries_the_readings(tmp_path: Path):
    records = (
        _records("baseline", 0, 32)
        + _records("demos", 0, 32)
        + _records("baseline", 0, 2000, "leaking")
        + _records("demos", 1, 2000, "leaking")
    )
    pooled = rates(records)
    report.write_report(pooled, rates(records, by_seed=True), comparisons(pooled, margin=0.05), tmp_path, "t")
    with open(tmp_path / "comparisons.csv", newline="") as handle:
        rows = {row["condition"]: row for row in csv.DictReader(handle)}
    assert {"p_value", "p_holm", "cohens_h", "p_equivalence", "margin", "power", "reading"} <= set(rows[COND])
    assert float(rows[COND]["p_equivalence"]) == pytest.approx(0.098944, abs=1e-6)
    assert rows[COND]["reading"].startswith("not shown equivalent")
    assert rows["leaking"]["reading"] == "equivalent within ±5 points (TOST p=<0.0001)"
    md = (tmp_path / "results.md").read_text()
    assert "| not shown equivalent (TOST p=0.0989; power 25%) |" in md
    assert "| equivalent within ±5 points (TOST p=<0.0001) |" in md
    assert "two one-sided tests" in md and "±5 points (`eval.equivalence_margin`)" in md


def _config(margin: float):
    return validate(compose_config("experiment=smoke", "out=unused", f"eval.equivalence_margin={margin}"))


def test_the_margin_comes_from_the_config():
    assert view(_config(0.05)).margin == 0.05
    assert View("t", [Entry("a", "m", "a")], [0], [], [], "a", []).margin == 0.10
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="equivalence_margin"):
            _config(bad)
