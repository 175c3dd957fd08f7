"""Inference at the level of training runs (whytune.stats.seed_level_test): its closed form against statsmodels' GLM,
its degenerate cases, a report in which Fisher's test on the pooled samples is significant and the seed-level test is
not, and a simulation of the seed-level test's type-I error and power. The figures in BENCHMARKS.md are printed by

    .venv/bin/python -m pytest tests/test_seed_inference.py -q -s -k simulated
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.stats import chi2_contingency
from scipy.stats import f as f_distribution

from whytune.eval import report
from whytune.eval.report import ONE_SEED_NOTE, SEED_LEVEL_NOTE
from whytune.eval.results import Entry, View, read_scores, write
from whytune.runs import RunPaths, append_jsonl
from whytune.stats import (
    _fisher_many,
    comparisons,
    fisher_exact_test,
    rates,
    seed_level_power,
    seed_level_test,
    simulate_rejections,
)

COND = "blackmail_explicit-america_replacement"
JUDGE = {"_target_": "stub judge"}
ALPHA = 0.05
REPLICATES = 2000  # per setting: Monte-Carlo SE of a 5% rejection rate 0.0049, of a power near 50% 0.011
MC_ERROR = 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPLICATES)


def _statsmodels(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> tuple[float, float, float]:
    """F, p and dispersion of the quasi-binomial F test by statsmodels: rates with var_weights n, scale "X2"."""
    k, n = (np.array([x[i] for x in (*a, *b)], dtype=float) for i in (0, 1))
    design = sm.add_constant(np.r_[np.ones(len(a)), np.zeros(len(b))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # perfect separation, the case the deviance drop is there for
        fits = [
            sm.GLM(k / n, x, family=sm.families.Binomial(), var_weights=n).fit(scale="X2")
            for x in (design[:, :1], design)
        ]
    null, full = fits
    f = (null.deviance - full.deviance) / max(full.scale, 1.0)
    return f, float(f_distribution.sf(f, 1, full.df_resid)), full.scale


CASES = {
    "spread runs, equal n": ([(10, 100), (50, 100), (30, 100)], [(45, 100), (15, 100), (35, 100)]),
    "unequal n": ([(3, 100), (5, 90), (2, 80)], [(10, 100), (12, 100), (20, 95)]),
    "three seeds against two": ([(1, 50), (2, 60), (4, 55)], [(5, 50), (9, 40)]),
    "one arm without a harmful reply": ([(0, 50), (0, 60), (0, 40)], [(5, 50), (4, 50), (7, 50)]),
}


@pytest.mark.parametrize("case", CASES)
def test_closed_form_is_statsmodels_glm(case: str) -> None:
    a, b = CASES[case]
    test = seed_level_test(a, b)
    f, p, dispersion = _statsmodels(a, b)
    assert (test.f, test.p_value, test.dispersion) == pytest.approx((f, p, dispersion), rel=1e-6)
    assert test.df == len(a) + len(b) - 2


def test_separation_is_tested_where_a_wald_test_gives_up() -> None:
    """0 of 300 against 90 of 300: overwhelming, yet the GLM's Wald p-value of the arm, at the floored dispersion of 1,
    is near 1 (Hauck-Donner: the coefficient's standard error grows faster than the coefficient)."""
    a, b = [(0, 100)] * 3, [(25, 100), (35, 100), (30, 100)]
    test = seed_level_test(a, b)
    assert test.dispersion < 1 and test.p_value < 0.001
    k, n = np.array([x for x, _ in (*a, *b)], dtype=float), np.full(6, 100.0)
    design = sm.add_constant(np.r_[1, 1, 1, 0, 0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wald = sm.GLM(k / n, design, family=sm.families.Binomial(), var_weights=n).fit(scale=1.0).pvalues[1]
    assert wald > 0.9


def test_runs_that_agree_give_the_binomial_likelihood_ratio_test() -> None:
    """A dispersion below 1 is floored at 1: the statistic is then the G-test of the pooled 2x2 table."""
    a, b = [(20, 100)] * 3, [(35, 100)] * 3
    test = seed_level_test(a, b)
    g = chi2_contingency([[60, 240], [105, 195]], correction=False, lambda_="log-likelihood").statistic
    assert test.dispersion == pytest.approx(0.0, abs=1e-12) and test.f == pytest.approx(g)


@pytest.mark.parametrize(
    ("a", "b", "note"),
    [
        ([(0, 100)] * 3, [(0, 100)] * 3, "no harmful reply in either arm"),
        ([(50, 50)] * 2, [(40, 40)] * 2, "every reply harmful in both arms"),
    ],
)
def test_nothing_to_weigh_is_p_one_with_a_reason(a: list, b: list, note: str) -> None:
    test = seed_level_test(a, b)
    assert (test.p_value, test.note) == (1.0, note)


def test_unscored_seeds_are_left_out() -> None:
    assert seed_level_test([(10, 100), (0, 0), (30, 100)], [(20, 100)]) == seed_level_test(
        [(10, 100), (30, 100)], [(20, 100)]
    )
    assert math.isnan(seed_level_test([(0, 0)] * 3, [(2, 10)] * 3).p_value)
    with pytest.raises(ValueError, match="three or more"):
        seed_level_test([(10, 100), (0, 0)], [(20, 100)])
    with pytest.raises(ValueError):
        seed_level_test([(11, 10)] * 2, [(2, 10)])


def test_vectorised_fisher_is_scipys() -> None:
    """The simulation's Fisher test against fisher_exact_test, on every table of 12 against 12 and on random tables
    of the simulated size, ties of symmetric tables included."""
    k1, k2 = (x.ravel() for x in np.meshgrid(np.arange(13), np.arange(13)))
    expected = [fisher_exact_test(a, 12, b, 12) for a, b in zip(k1, k2)]
    assert _fisher_many(k1, 12, k2, 12) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(3)
    k1, k2 = rng.integers(40, 140, 60), rng.integers(40, 140, 60)
    expected = [fisher_exact_test(a, 300, b, 280) for a, b in zip(k1, k2)]
    assert _fisher_many(k1, 300, k2, 280) == pytest.approx(expected, rel=1e-10)


# --- through the report -------------------------------------------------------------------------


def _rows(arm: str, seed: int, harmful: int, samples: int = 100) -> tuple[list[dict], list[dict]]:
    """The verdicts and the samples of one arm x seed, as the eval stage writes them: the first `harmful` harmful."""
    base = [{"id": f"{arm}/seed{seed}/{COND}/{i}", "arm": arm, "seed": seed, "condition": COND} for i in range(samples)]
    verdicts = [
        {**row, "harmful": i < harmful, "classifier_verdict": i < harmful, "reasoning": "", "acted": True}
        for i, row in enumerate(base)
    ]
    return verdicts, [{**row, "index": i, "response": "Done.", "finish": "eos"} for i, row in enumerate(base)]


def _run_folder(root: Path, harmful: dict[str, list[int]]) -> None:
    """A run folder's verdicts and samples: arm -> harmful replies of each seed, of 100 each."""
    paths = RunPaths(root, "tiny")
    for arm, counts in harmful.items():
        for seed, count in enumerate(counts):
            verdicts, samples = _rows(arm, seed, count)
            append_jsonl(paths.eval(arm, seed) / "samples.jsonl", samples)
            append_jsonl(paths.verdicts(arm, seed, JUDGE), verdicts)


def _report(root: Path, seeds: list[int]) -> tuple[str, dict[str, dict], list[dict], str]:
    view = View("seeds", [Entry(arm, "tiny", arm) for arm in ("baseline", "demos")], seeds, [COND], [], "baseline", [])
    table = write(read_scores(root, view, JUDGE), view, root)
    with open(root / "results.csv", newline="") as handle:
        results = {row["arm"]: row for row in csv.DictReader(handle)}
    with open(root / "comparisons.csv", newline="") as handle:
        comps = list(csv.DictReader(handle))
    return table, results, comps, (root / "results.md").read_text()


def test_spread_runs_are_not_significant_where_pooled_fisher_is(tmp_path: Path) -> None:
    """Per-seed rates 10, 50, 30% (baseline) against 25, 15, 20% (demos), 100 samples each: 90/300 against 60/300
    is significant sample by sample (Fisher p = 0.006), but runs this far apart could give it by chance."""
    _run_folder(tmp_path, {"baseline": [10, 50, 30], "demos": [25, 15, 20]})
    table, results, comps, md = _report(tmp_path, [0, 1, 2])
    demos = results["demos"]
    assert demos["level_vs_baseline"] == "seed-level"
    assert float(demos["p_vs_baseline"]) > 0.05 and float(demos["p_holm_vs_baseline"]) > 0.05
    assert float(demos["p_sample_level_vs_baseline"]) == pytest.approx(fisher_exact_test(60, 300, 90, 300))
    assert float(demos["p_sample_level_vs_baseline"]) < 0.01
    assert demos["seed_rates"] == "0.2500;0.1500;0.2000" and float(demos["seed_rate_sd"]) == pytest.approx(0.05)
    assert results["baseline"]["seed_rates"] == "0.1000;0.5000;0.3000"
    (comp,) = comps
    assert comp["level"] == "seed-level" and (comp["seeds_a"], comp["seeds_b"], comp["df"]) == ("3", "3", "4")
    assert float(comp["dispersion"]) > 5 and float(comp["p_value"]) == pytest.approx(float(demos["p_vs_baseline"]))
    assert comp["reading"].startswith("not shown equivalent (seed-level TOST p=")
    for text in (md, table):
        assert "p sample-level" in text and "seed-level" in text and "25.0, 15.0, 20.0% (SD 5.0)" in text
    assert SEED_LEVEL_NOTE in md and ONE_SEED_NOTE not in md
    assert SEED_LEVEL_NOTE.replace("*", "") in table


def test_one_seed_is_tested_by_fisher_and_says_so(tmp_path: Path) -> None:
    records = _rows("baseline", 0, 10)[0] + _rows("demos", 0, 25)[0]
    pooled, per_seed = rates(records), rates(records, by_seed=True)
    comps = comparisons(pooled, per_seed=per_seed)
    table = report.write_report(pooled, per_seed, comps, tmp_path, "one seed")
    with open(tmp_path / "results.csv", newline="") as handle:
        demos = {row["arm"]: row for row in csv.DictReader(handle)}["demos"]
    assert demos["level_vs_baseline"] == "sample-level"
    assert demos["p_vs_baseline"] == demos["p_sample_level_vs_baseline"]
    assert float(demos["p_vs_baseline"]) == pytest.approx(fisher_exact_test(25, 100, 10, 100))
    assert comps[0].level == "sample-level" and math.isnan(comps[0].dispersion)
    md = (tmp_path / "results.md").read_text()
    assert ONE_SEED_NOTE in md and "Training-run variance is not measured" in table
    assert "p sample-level" not in md  # the primary test is the sample-level one: no second column


# --- simulation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", [0.0, 0.05, 0.1])
def test_simulated_type_one_error(spread: float) -> None:
    """Equal mean rates (30%), each run's own rate spread around it with SD `spread`, 3 seeds x 100 samples: the
    seed-level test rejects at most 5% (plus Monte-Carlo error); Fisher's pooled test rejects more as runs spread."""
    found = simulate_rejections(0.3, 0.3, spread, seeds=3, samples=100, replicates=REPLICATES, seed=7)
    print(f"\ntype-I error, spread {spread}: seed-level {found.seed_level:.4f}, sample-level {found.sample_level:.4f}")
    assert found.seed_level <= ALPHA + MC_ERROR
    if spread:
        assert found.sample_level > ALPHA + MC_ERROR and found.sample_level > found.seed_level + 0.1


def test_simulated_fisher_rejects_more_the_more_runs_spread() -> None:
    found = [simulate_rejections(0.3, 0.3, s, 3, 100, REPLICATES, seed=7).sample_level for s in (0.0, 0.05, 0.1)]
    assert found == sorted(found) and found[-1] > 0.3


@pytest.mark.parametrize("spread", [0.0, 0.05, 0.1])
def test_simulated_power(spread: float) -> None:
    """30% against 15%, 3 seeds x 100 samples: the seed-level test's power, simulated and by seed_level_power (which
    ignores the floor of the dispersion, so at no spread it promises a little more than the test gives)."""
    found = simulate_rejections(0.3, 0.15, spread, seeds=3, samples=100, replicates=REPLICATES, seed=11)
    predicted = seed_level_power(0.3, 0.15, spread, 3, 100)
    print(
        f"\npower 30% vs 15%, spread {spread}: seed-level {found.seed_level:.3f} (seed_level_power {predicted:.3f}), "
        f"sample-level {found.sample_level:.3f}"
    )
    assert found.seed_level == pytest.approx(predicted, abs=0.05)
    assert found.sample_level >= found.seed_level
