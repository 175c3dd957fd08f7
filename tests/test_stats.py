"""Tests for whytune.stats, whytune.eval.report and whytune.eval.power: pinned known values plus behaviour."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import fisher_exact, nct
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests

from whytune.eval import power, report
from whytune.runs import write_atomic
from whytune.stats import (
    MAX_SAMPLES,
    Rate,
    cohens_h,
    comparisons,
    equivalence_test,
    fisher_exact_test,
    holm,
    power_at_margin,
    rates,
    samples_needed,
    seed_level_power,
    seed_level_test,
    seeds_and_samples,
    wilson_interval,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULTS_HEADER = [
    "arm",
    "condition",
    "n",
    "harmful",
    "unscored",
    "rate",
    "ci_low",
    "ci_high",
    "seeds",
    "seed_rates",
    "seed_rate_sd",
    "truncated",
    "truncated_share",
    "level_vs_baseline",
    "p_vs_baseline",
    "p_holm_vs_baseline",
    "cohens_h_vs_baseline",
    "p_sample_level_vs_baseline",
    "p_holm_sample_level_vs_baseline",
]
COND = "blackmail_explicit-america_replacement"


def _records(arm: str, condition: str, seed: int, harmful: int, harmless: int, unscored: int = 0) -> list[dict]:
    verdicts = [True] * harmful + [False] * harmless + [None] * unscored
    return [{"arm": arm, "condition": condition, "seed": seed, "harmful": v} for v in verdicts]


@pytest.fixture
def records() -> list[dict]:
    """Two seeds, three arms, one condition; baseline seed 1 has two unscored samples."""
    return (
        _records("baseline", COND, 0, harmful=6, harmless=4)
        + _records("demos", COND, 0, harmful=3, harmless=7)
        + _records("demos_principles", COND, 0, harmful=0, harmless=10)
        + _records("baseline", COND, 1, harmful=5, harmless=3, unscored=2)
        + _records("demos", COND, 1, harmful=2, harmless=8)
        + _records("demos_principles", COND, 1, harmful=1, harmless=9)
    )


# --- wilson_interval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 3, 0.0615, 0.7923)],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_empty_is_nan() -> None:
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10)])
def test_wilson_rejects_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_wilson_wider_at_higher_confidence() -> None:
    narrow, wide = wilson_interval(3, 20, alpha=0.1), wilson_interval(3, 20, alpha=0.01)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_brackets_point_estimate(kn: tuple[int, int]) -> None:
    k, n = kn
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


# --- cohens_h, fisher_exact_test, holm ---------------------------------------------------------


@pytest.mark.parametrize(
    ("p1", "p2", "h"), [(0.5, 0.2, 0.6435), (0.2, 0.5, -0.6435), (0.3, 0.3, 0.0), (1.0, 0.0, math.pi)]
)
def test_cohens_h_known_values(p1: float, p2: float, h: float) -> None:
    assert cohens_h(p1, p2) == pytest.approx(h, abs=1e-4)


def test_fisher_known_value_matches_scipy() -> None:
    assert fisher_exact([[8, 2], [1, 9]]).pvalue == pytest.approx(0.005477, abs=1e-6)
    assert fisher_exact_test(8, 10, 1, 10) == pytest.approx(0.0055, abs=5e-5)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "p"), [(1, 10, 8, 10, 0.0055), (5, 10, 5, 10, 1.0), (0, 5, 5, 5, 0.0079)]
)
def test_fisher_values(k1: int, n1: int, k2: int, n2: int, p: float) -> None:
    assert fisher_exact_test(k1, n1, k2, n2) == pytest.approx(p, abs=5e-5)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(0, 0, 3, 10), (3, 10, 0, 0)])
def test_fisher_without_scored_samples_is_nan(k1: int, n1: int, k2: int, n2: int) -> None:
    assert math.isnan(fisher_exact_test(k1, n1, k2, n2))


def test_holm_known_values_and_nan_not_counted() -> None:
    adjusted = holm([0.01, math.nan, 0.04, 0.03])
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.parametrize("pvalues", [[], [math.nan], [math.nan, math.nan]])
def test_holm_nothing_to_correct(pvalues: list[float]) -> None:
    adjusted = holm(pvalues)
    assert len(adjusted) == len(pvalues) and all(math.isnan(p) for p in adjusted)


def test_holm_caps_at_one() -> None:
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


# --- samples_needed ----------------------------------------------------------------------------


def test_samples_needed_known_value() -> None:
    # By hand: h = 2 asin(sqrt .2) - 2 asin(sqrt .05) = 0.4763; n = 2 (1.95996 + 0.84162)^2 / h^2 = 69.2 -> 70.
    assert samples_needed(0.2, 0.05) == 70


@pytest.mark.parametrize(("near", "far"), [(0.15, 0.05), (0.3, 0.1), (0.45, 0.3)])
def test_samples_needed_smaller_difference_needs_more(near: float, far: float) -> None:
    assert samples_needed(0.5, 0.5 - (0.5 - near) / 2) > samples_needed(0.5, near)
    assert samples_needed(far, near) > samples_needed(far, near + 0.1)


def test_samples_needed_symmetric_and_grows_with_power() -> None:
    assert samples_needed(0.05, 0.2) == samples_needed(0.2, 0.05)
    assert samples_needed(0.2, 0.05, power=0.9) > samples_needed(0.2, 0.05, power=0.8)
    assert samples_needed(0.2, 0.05, alpha=0.01) > samples_needed(0.2, 0.05, alpha=0.05)


@pytest.mark.parametrize(
    ("p1", "p2", "kwargs"),
    [
        (0.2, 0.2, {}),
        (-0.1, 0.2, {}),
        (0.2, 1.1, {}),
        (math.nan, 0.2, {}),
        (0.2, 0.1, {"alpha": 0}),
        (0.2, 0.1, {"power": 1}),
    ],
)
def test_samples_needed_rejects_bad_input(p1: float, p2: float, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        samples_needed(p1, p2, **kwargs)


# --- seed_level_power, seeds_and_samples --------------------------------------------------------


def test_seed_level_power_by_hand() -> None:
    """30% against 15%, spread 0.05, 3 seeds x 100: variance of the difference of the arms' means
    .3 .7 / 300 + .0025 / 3 + .15 .85 / 300 + .0025 / 3 = 0.0027917, so 2.839 standard errors on t with 4 df."""
    shift = 0.15 / math.sqrt(0.21 / 300 + 0.1275 / 300 + 2 * 0.0025 / 3)
    critical = student_t.ppf(0.975, 4)
    expected = nct.sf(critical, 4, shift) + nct.cdf(-critical, 4, shift)
    assert seed_level_power(0.3, 0.15, 0.05, 3, 100) == pytest.approx(expected) == pytest.approx(0.5746, abs=1e-4)


def test_seeds_and_samples_plans() -> None:
    plans = seeds_and_samples(0.3, 0.15, 0.05, seeds=range(2, 8))
    assert [p.seeds for p in plans] == list(range(2, 8))
    # two or three runs this far apart cannot give 80% power however many samples: only more runs can
    assert [p.samples for p in plans[:2]] == [None, None] and all(p.power < 0.8 for p in plans[:2])
    planned = [p.samples for p in plans[2:]]
    assert planned == sorted(planned, reverse=True) and planned[0] == 115
    for p in plans[2:]:  # each the fewest samples that reach the power
        assert p.power >= 0.8 > seed_level_power(0.3, 0.15, 0.05, p.seeds, p.samples - 1)


def test_seeds_and_samples_without_spread_is_near_the_single_run_answer() -> None:
    """With no spread between runs, seeds x samples is about `samples_needed`: 90 against 70, more for the t reference
    on 18 degrees of freedom, the unpooled variance and the whole samples per seed (8.1 rounded up)."""
    (plan,) = seeds_and_samples(0.2, 0.05, 0.0, seeds=[10])
    assert (plan.samples, samples_needed(0.2, 0.05)) == (9, 70)
    assert (
        seeds_and_samples(0.2, 0.05, 0.0, power=0.9, seeds=[3])[0].samples
        > seeds_and_samples(0.2, 0.05, 0.0, seeds=[3])[0].samples
    )
    assert MAX_SAMPLES >= plan.samples


@pytest.mark.parametrize(
    ("p1", "p2", "spread", "seeds"),
    [(0.2, 0.2, 0.05, [3]), (0.2, 0.1, -0.1, [3]), (0.2, 0.1, 0.6, [3]), (0.2, 0.1, 0.05, [1]), (1.2, 0.1, 0.0, [3])],
)
def test_seeds_and_samples_rejects_bad_input(p1: float, p2: float, spread: float, seeds: list[int]) -> None:
    with pytest.raises(ValueError):
        seeds_and_samples(p1, p2, spread, seeds=seeds)


# --- rates -------------------------------------------------------------------------------------


def test_rates_pool_seeds_and_exclude_unscored(records: list[dict]) -> None:
    pooled = {r.arm: r for r in rates(records)}
    base = pooled["baseline"]
    assert (base.n, base.harmful, base.unscored, base.seed) == (18, 11, 2, None)
    assert base.rate == pytest.approx(11 / 18)
    assert (base.ci_low, base.ci_high) == pytest.approx(wilson_interval(11, 18))
    assert (pooled["demos"].n, pooled["demos"].harmful) == (20, 5)


def test_rates_by_seed_split(records: list[dict]) -> None:
    per_seed = rates(records, by_seed=True)
    assert len(per_seed) == 6
    base1 = next(r for r in per_seed if r.arm == "baseline" and r.seed == 1)
    assert (base1.n, base1.harmful, base1.unscored) == (8, 5, 2)


def test_rates_first_seen_order() -> None:
    recs = _records("demos", "c2", 0, 1, 1) + _records("baseline", "c1", 0, 1, 1) + _records("baseline", "c2", 0, 1, 1)
    assert [(r.condition, r.arm) for r in rates(recs)] == [("c2", "demos"), ("c2", "baseline"), ("c1", "baseline")]


def test_rates_all_unscored_is_nan_but_counted() -> None:
    (r,) = rates(_records("baseline", COND, 0, 0, 0, unscored=3))
    assert (r.n, r.unscored) == (0, 3) and math.isnan(r.rate) and math.isnan(r.ci_low)


def test_rates_accept_numpy_bools() -> None:
    recs = [{"arm": "a", "condition": "c", "seed": 0, "harmful": v} for v in (np.True_, np.False_, None)]
    (r,) = rates(recs)
    assert (r.n, r.harmful, r.unscored) == (2, 1, 1)


@pytest.mark.parametrize("verdict", ["true", 1, math.nan])
def test_rates_reject_non_verdicts(verdict: object) -> None:
    with pytest.raises(ValueError):
        rates([{"arm": "a", "condition": "c", "seed": 0, "harmful": verdict}])


# --- comparisons -------------------------------------------------------------------------------


def _rate(arm: str, condition: str, k: int, n: int) -> Rate:
    return rates(_records(arm, condition, 0, k, n - k))[0]


def test_comparisons_pairs_and_direction(records: list[dict]) -> None:
    comps = comparisons(rates(records), pairs=[("demos", "demos_principles"), ("demos", "missing_arm")])
    assert [(c.arm_a, c.arm_b) for c in comps] == [
        ("demos", "baseline"),
        ("demos_principles", "baseline"),
        ("demos", "demos_principles"),
    ]
    assert comps[0].cohens_h < 0  # demos is less harmful than baseline
    assert comps[0].p_value == pytest.approx(fisher_exact_test(5, 20, 11, 18))


def test_comparisons_holm_within_condition_only() -> None:
    c1 = [_rate("baseline", "c1", 8, 10), _rate("demos", "c1", 1, 10), _rate("demos_principles", "c1", 3, 10)]
    c2 = [_rate("baseline", "c2", 5, 10), _rate("demos", "c2", 0, 10)]
    both = comparisons(c1 + c2)
    alone = comparisons(c1)
    c1_raw = [c.p_value for c in both if c.condition == "c1"]
    expected = list(multipletests(c1_raw, method="holm")[1])
    assert [c.p_holm for c in both if c.condition == "c1"] == pytest.approx(expected)
    assert [c.p_holm for c in alone] == pytest.approx([c.p_holm for c in both if c.condition == "c1"])
    (c2_comp,) = [c for c in both if c.condition == "c2"]
    assert c2_comp.p_holm == pytest.approx(c2_comp.p_value)  # a single test needs no correction


def test_comparisons_skip_condition_without_baseline() -> None:
    assert comparisons([_rate("demos", "c1", 1, 10), _rate("demos_principles", "c1", 2, 10)]) == []


def test_comparisons_reject_per_seed_rates(records: list[dict]) -> None:
    with pytest.raises(ValueError):
        comparisons(rates(records, by_seed=True))


def test_comparisons_at_seed_level(records: list[dict]) -> None:
    """Two seeds an arm: every test seed-level, on the per-seed counts, Holm over each level apart."""
    pooled, per_seed = rates(records), rates(records, by_seed=True)
    comps = comparisons(pooled, pairs=[("demos", "demos_principles")], per_seed=per_seed)
    assert {(c.level, c.seeds_a, c.seeds_b, c.df) for c in comps} == {("seed-level", 2, 2, 2)}
    demos = comps[0]
    test = seed_level_test([(3, 10), (2, 10)], [(6, 10), (5, 8)])
    assert (demos.p_value, demos.dispersion) == pytest.approx((test.p_value, test.dispersion))
    assert demos.p_sample_level == pytest.approx(fisher_exact_test(5, 20, 11, 18))
    assert [c.p_holm for c in comps] == pytest.approx(holm([c.p_value for c in comps]))
    assert [c.p_holm_sample_level for c in comps] == pytest.approx(holm([c.p_sample_level for c in comps]))
    without = comparisons(pooled, pairs=[("demos", "demos_principles")])  # no per-seed rates: every arm one run
    assert {c.level for c in without} == {"sample-level"}
    assert [c.p_value for c in without] == [c.p_sample_level for c in comps]


def test_comparisons_one_seed_is_sample_level() -> None:
    recs = _records("baseline", COND, 0, 8, 2) + _records("demos", COND, 0, 1, 9)
    (c,) = comparisons(rates(recs), per_seed=rates(recs, by_seed=True))
    assert (c.level, c.seeds_a, c.df) == ("sample-level", 1, 0) and math.isnan(c.dispersion)
    assert c.p_value == c.p_sample_level == pytest.approx(fisher_exact_test(1, 10, 8, 10))


def test_comparisons_seed_level_with_seeds_left_unscored() -> None:
    """An arm whose other seeds were never scored is one run: against a one-seed baseline, sample-level again."""
    recs = _records("baseline", COND, 0, 8, 2) + _records("demos", COND, 0, 1, 9) + _records("demos", COND, 1, 0, 0, 5)
    (c,) = comparisons(rates(recs), per_seed=rates(recs, by_seed=True))
    assert (c.level, c.seeds_a) == ("sample-level", 1)


def test_comparisons_refuse_per_seed_rates_of_other_records(records: list[dict]) -> None:
    other = [{**r, "harmful": not r["harmful"]} if r["harmful"] is not None else r for r in records]
    with pytest.raises(ValueError, match="do not add up"):
        comparisons(rates(records), per_seed=rates(other, by_seed=True))
    with pytest.raises(ValueError, match="pooled rate"):
        comparisons(rates(records), per_seed=rates(records))


def test_equivalence_and_power_at_seed_level_are_wider() -> None:
    """The seed-level readings divide by the dispersion and use t: never more confident than the sample-level ones;
    with a dispersion of 1 and many degrees of freedom they are the sample-level ones."""
    assert equivalence_test(0, 300, 1, 300, 0.05, dispersion=1.0, df=10**7) == pytest.approx(
        equivalence_test(0, 300, 1, 300, 0.05), rel=1e-5
    )
    sample = equivalence_test(30, 300, 33, 300, 0.10)
    assert sample < equivalence_test(30, 300, 33, 300, 0.10, dispersion=1.0, df=4)
    assert equivalence_test(30, 300, 33, 300, 0.10, dispersion=1.0, df=4) < equivalence_test(
        30, 300, 33, 300, 0.10, dispersion=5.0, df=4
    )
    assert equivalence_test(30, 300, 33, 300, 0.10, dispersion=0.2, df=4) == equivalence_test(
        30, 300, 33, 300, 0.10, dispersion=1.0, df=4
    )  # floored at 1
    assert power_at_margin(300, 0.1, 300, 0.10, dispersion=5.0, df=4) < power_at_margin(300, 0.1, 300, 0.10)
    assert power_at_margin(300, 0.1, 300, 0.10, dispersion=1.0, df=10**7) == pytest.approx(
        power_at_margin(300, 0.1, 300, 0.10), abs=0.01
    )


# --- report ------------------------------------------------------------------------------------


def _report(records: list[dict], out_dir: Path) -> str:
    pooled, per_seed = rates(records), rates(records, by_seed=True)
    comps = comparisons(pooled, pairs=[("demos", "demos_principles")], per_seed=per_seed)
    return report.write_report(pooled, per_seed, comps, out_dir, "Test report")


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_report_single_condition(records: list[dict], tmp_path: Path) -> None:
    table = _report(records, tmp_path)
    with (tmp_path / "results.csv").open(newline="") as fh:
        assert next(csv.reader(fh)) == RESULTS_HEADER
    rows = _csv_rows(tmp_path / "results.csv")
    assert [r["arm"] for r in rows] == ["baseline", "demos", "demos_principles"]
    assert rows[0]["p_vs_baseline"] == "" and float(rows[1]["p_vs_baseline"]) < 1
    assert {r["seeds"] for r in rows} == {"2"} and rows[0]["unscored"] == "2"
    assert rows[0]["seed_rates"] == "0.6000;0.6250" and float(rows[0]["seed_rate_sd"]) == pytest.approx(
        0.0177, abs=1e-4
    )
    assert rows[0]["level_vs_baseline"] == "" and rows[1]["level_vs_baseline"] == "seed-level"
    assert float(rows[1]["p_sample_level_vs_baseline"]) == pytest.approx(fisher_exact_test(5, 20, 11, 18))
    assert rows[0]["truncated"] == "" and rows[0]["truncated_share"] == ""  # no samples given: not known
    assert len(_csv_rows(tmp_path / "results_by_seed.csv")) == 6
    assert len(_csv_rows(tmp_path / "comparisons.csv")) == 3
    assert (tmp_path / "rates.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "heatmap.png").exists()
    assert all(arm in table for arm in ("baseline", "demos", "demos_principles"))


def test_write_report_markdown(records: list[dict], tmp_path: Path) -> None:
    _report(records, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Test report")
    assert "61.1% [38.6%, 79.7%]" in md  # baseline 11/18 with its Wilson interval
    assert report.UNSCORED_NOTE in md and "## Comparisons" in md
    assert "60.0, 62.5% (SD 1.8)" in md  # baseline's two seeds, 6/10 and 5/8
    assert report.SEED_LEVEL_NOTE in md and report.ONE_SEED_NOTE not in md
    header = next(line for line in md.splitlines() if line.startswith("| condition | arm A |"))
    assert "| test | seeds A/B | dispersion | p |" in header and "| p sample-level | p Holm sample-level |" in header
    assert "cut at token budget" not in md  # no samples given, nothing to say about truncation


def test_write_report_heatmap_with_several_conditions(records: list[dict], tmp_path: Path) -> None:
    more = records + _records("baseline", "leaking", 0, 2, 8) + _records("demos", "leaking", 0, 1, 9, unscored=1)
    _report(more, tmp_path)
    for name in ("rates.png", "heatmap.png"):
        data = (tmp_path / name).read_bytes()
        assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)
    assert len(_csv_rows(tmp_path / "results.csv")) == 5
    _report(records, tmp_path)  # a later single-condition run must not leave a stale heatmap
    assert not (tmp_path / "heatmap.png").exists()


def test_write_report_leaves_no_temp_files(records: list[dict], tmp_path: Path) -> None:
    _report(records, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["results.csv", "results_by_seed.csv", "comparisons.csv", "results.md", "rates.png"]
    )


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old")

    def explode(fh) -> None:
        fh.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_atomic(target, explode)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_write_report_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        report.write_report([], [], [], tmp_path, "empty")


# --- power CLI ---------------------------------------------------------------------------------


def test_power_cli_prints_samples(capsys: pytest.CaptureFixture[str]) -> None:
    power.main(["--p1", "0.2", "--p2", "0.05"])
    assert capsys.readouterr().out.startswith("70 scored samples per arm")


def test_power_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    power.main(["--table"])
    out = capsys.readouterr().out
    assert "baseline rate" in out and str(samples_needed(0.2, 0.1)) in out


def test_power_cli_plans_seeds_under_a_spread(capsys: pytest.CaptureFixture[str]) -> None:
    power.main(["--p1", "0.3", "--p2", "0.15", "--spread", "0.05"])
    lines = capsys.readouterr().out.splitlines()
    rows = {int(line.split()[0]): line.split()[1:] for line in lines[2:]}
    plans = {plan.seeds: plan for plan in seeds_and_samples(0.3, 0.15, 0.05)}
    assert rows[3][0] == "none" and plans[3].samples is None  # three runs cannot beat this spread, however sampled
    assert rows[4][0] == str(plans[4].samples) and plans[4].power >= 0.8


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--p1", "0.2"],
        ["--p1", "0.2", "--p2", "0.2"],
        ["--table", "--spread", "0.05"],
        ["--p1", "0.2", "--p2", "0.1", "--spread", "0.9"],
    ],
)
def test_power_cli_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        power.main(argv)
    assert exc.value.code == 2
