"""Statistics for comparing harmful-behaviour rates between fine-tuning arms.

Verdicts are ``True`` (harmful), ``False`` (harmless) or ``None`` (unscored).
Unscored samples never enter a denominator, so a judge that fails to answer
cannot make an arm look safer; they are still counted so reports can show them.

Two levels of inference. An arm trained with several seeds is several training runs, and runs differ by more than
their samples do; pooling every sample into one binomial (Fisher's exact test, "sample-level") ignores that spread
and claims significance the runs do not support. So with several seeds the primary test takes the training run as
the unit (`seed_level_test`); the sample-level test is kept beside it, labelled. With one seed per arm there is
nothing to measure the spread with, and Fisher's test is the primary one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy.special import xlogy
from scipy.stats import f as f_distribution
from scipy.stats import fisher_exact, hypergeom, nct, norm
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import power_proportions_2indep, proportion_confint, proportion_effectsize

NAN = float("nan")
EQUIVALENCE_MARGIN = 0.10  # the default of eval.equivalence_margin: an absolute difference in rates


@dataclass(frozen=True)
class Rate:
    """Harmful rate of one arm on one condition; ``seed`` None means pooled over seeds."""

    arm: str
    condition: str
    seed: int | None
    n: int  # scored samples only
    harmful: int
    unscored: int
    rate: float  # nan when n == 0
    ci_low: float
    ci_high: float


Level = Literal["seed-level", "sample-level"]  # the unit of a test: the training run (seed), or the sample
SEED_LEVEL: Level = "seed-level"
SAMPLE_LEVEL: Level = "sample-level"


@dataclass(frozen=True)
class Comparison:
    """Arm A against arm B on one condition; ``cohens_h`` > 0 means A is more harmful.

    ``p_value`` is the primary test, at ``level``: "seed-level" (`seed_level_test`, each training run one replicate)
    when the two arms have three or more scored seeds between them, else "sample-level" (Fisher's exact test on the
    samples pooled over seeds: with one seed per arm there is nothing else, and training-run variance is not
    measured). The sample-level test is kept beside it in every case. The equivalence test and the power are at the
    primary's level: read at sample level beside a seed-level test, they would call two arms equivalent, or a null
    result well powered, on the pooled samples while their runs disagree, the overclaim the seed level removes.
    """

    condition: str
    arm_a: str
    arm_b: str
    level: Level
    p_value: float
    p_holm: float  # Holm within the condition, over the primary p-values
    cohens_h: float
    # Two one-sided tests that |rate A - rate B| < margin, an absolute difference in rates (equivalence_test): below
    # 0.05, the arms are equivalent within the margin.
    p_equivalence: float
    margin: float
    power: float  # at alpha 0.05, of detecting a difference of the margin at these n and B's rate (power_at_margin)
    seeds_a: int  # scored seeds (training runs) of each arm
    seeds_b: int
    dispersion: float  # seed-level: Pearson chi2 / residual df, before its floor at 1; nan at sample level
    df: int  # seed-level: residual degrees of freedom, seeds_a + seeds_b - 2; 0 at sample level
    # Fisher's exact test on the samples pooled over seeds, and its Holm correction within the condition: with several
    # seeds it ignores the variance between training runs, so it is shown for reference, never read alone.
    p_sample_level: float
    p_holm_sample_level: float
    note: str = ""  # why the primary test had nothing to weigh, e.g. no harmful reply in either arm


@dataclass(frozen=True)
class SeedTest:
    """The seed-level test of arm A against arm B (`seed_level_test`)."""

    p_value: float
    f: float  # the deviance drop over the dispersion, on F(1, df)
    df: int  # residual degrees of freedom: the seeds of both arms less the two fitted rates
    dispersion: float  # Pearson chi2 / df of the two-rate fit, before its floor at 1
    note: str  # "" or why there was nothing to weigh


def _check_counts(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval: unlike the normal interval it stays sane at 0/n and n/n."""
    _check_counts(k, n)
    if n == 0:
        return NAN, NAN
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    # Rounding can leave the bound a hair past k/n at k = 0 or k = n (e.g. 2.8e-17 for 0/7).
    return min(float(low), k / n), max(float(high), k / n)


def cohens_h(p1: float, p2: float) -> float:
    """Effect size on the arcsine scale, comparable across base rates (0.2 small, 0.5 medium)."""
    return float(proportion_effectsize(p1, p2))


def fisher_exact_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value: exact at the small counts these evals produce.

    Returns nan when either arm has no scored sample, since there is nothing to compare.
    """
    _check_counts(k1, n1)
    _check_counts(k2, n2)
    if n1 == 0 or n2 == 0:
        return NAN
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def _restricted_mle(k1: int, n1: int, k2: int, n2: int, delta: float) -> tuple[float, float]:
    """Maximum-likelihood rates (p1, p2) under p1 - p2 = delta: the root of Miettinen and Nurminen's (1985) cubic in
    p2, x^3 + 3b x^2 + c x + d = 0, in their closed form. Written here rather than taken from statsmodels, whose
    score test (0.15) has `k2` where `n2` belongs in the linear coefficient, so its rates do not maximise the
    likelihood whenever k2 < n2 (statsmodels issue 10269), and takes arccos of a ratio that rounding can push past
    -1 or 1, returning nan (e.g. 0/32 against 4/32). Here the ratio and the rates are clipped into range."""
    n, k = n1 + n2, k1 + k2
    b = ((n1 + 2 * n2) * delta - n - k) / (3 * n)
    c = ((n2 * delta - n - 2 * k2) * delta + k) / n
    d = k2 * delta * (1 - delta) / n
    q = b**3 - b * c / 2 + d / 2
    p = math.copysign(math.sqrt(max(b * b - c / 3, 0.0)), q)
    if p == 0:  # a triple root
        p2 = -b
    else:
        p2 = 2 * p * math.cos((math.pi + math.acos(min(1.0, max(-1.0, q / p**3)))) / 3) - b
    p2 = min(max(p2, max(0.0, -delta)), min(1.0, 1 - delta))
    return p2 + delta, p2


def _score_z(k1: int, n1: int, k2: int, n2: int, delta: float) -> float:
    """Score statistic of H0: p1 - p2 = delta, with the Miettinen-Nurminen variance correction n / (n - 1)."""
    p1, p2 = _restricted_mle(k1, n1, k2, n2, delta)
    var = (p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2) * (n1 + n2) / (n1 + n2 - 1)
    return (k1 / n1 - k2 / n2 - delta) / math.sqrt(var)


def equivalence_test(
    k1: int, n1: int, k2: int, n2: int, margin: float, dispersion: float = 1.0, df: int | None = None
) -> float:
    """Two one-sided tests (TOST) for two independent proportions: the p-value of "the rates differ by less than
    `margin`" (H0: |p1 - p2| >= margin), the larger of the two one-sided p-values. Each is Miettinen and Nurminen's
    score test, as in statsmodels' ``tost_proportions_2indep(k1, n1, k2, n2, -margin, margin, method="score")``,
    with the rates under its null from `_restricted_mle`. Below 0.05: equivalent within the margin (the 90% score
    interval of the difference lies inside +-margin). nan when an arm has no scored sample.

    At seed level (`df` given: k and n pooled over seeds, `dispersion` and `df` from `seed_level_test`) each score
    statistic is divided by the square root of the dispersion, floored at 1 as there, and read on t with `df`
    degrees of freedom: the quasi-likelihood score test, whose variance is the binomial one times the dispersion.
    With a dispersion of 1 and no `df` it is the sample-level test above."""
    _check_counts(k1, n1)
    _check_counts(k2, n2)
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    if n1 == 0 or n2 == 0:
        return NAN
    scale = math.sqrt(max(dispersion, 1.0))
    reference = norm if df is None else student_t(df)
    above_lower = float(reference.sf(_score_z(k1, n1, k2, n2, -margin) / scale))  # H0: p1 - p2 <= -margin
    below_upper = float(reference.cdf(_score_z(k1, n1, k2, n2, margin) / scale))  # H0: p1 - p2 >= margin
    return max(above_lower, below_upper)


def _t_power(shift: float, df: int, alpha: float) -> float:
    """Power of a two-sided t-test at `alpha` on `df` degrees of freedom when the true difference is `shift` standard
    errors (the noncentral t)."""
    shift = abs(shift)
    if math.isinf(shift):
        return 1.0
    critical = student_t.ppf(1 - alpha / 2, df)
    far = float(nct.cdf(-critical, df, shift))  # rejecting on the wrong side; scipy gives nan deep in that tail
    return float(nct.sf(critical, df, shift)) + (0.0 if math.isnan(far) else far)


def power_at_margin(
    n1: int, p2: float, n2: int, margin: float, alpha: float = 0.05, dispersion: float = 1.0, df: int | None = None
) -> float:
    """Power of a two-sided two-proportion z-test at `alpha` (statsmodels' power_proportions_2indep) to detect arm 1
    differing by `margin` from arm 2's rate `p2`, at n1 and n2 samples; the difference is taken towards 50%, the
    direction that is harder to detect. A normal approximation: at a handful of events it overstates the power of
    Fisher's exact test. nan when an arm has no scored sample.

    At seed level (`df` given, n pooled over seeds, `dispersion` and `df` from `seed_level_test`): the power of a t
    test on `df` degrees of freedom whose variance is the binomial one at the two rates times the dispersion (floored
    at 1), the variance the seed-level test assumes."""
    if n1 == 0 or n2 == 0 or math.isnan(p2):
        return NAN
    towards_half = (margin, -margin) if p2 < 0.5 else (-margin, margin)
    diff = next((d for d in towards_half if 0 <= p2 + d <= 1), None)
    if diff is None:  # a margin above 50% from a rate near the middle
        return NAN
    if df is None:
        return float(power_proportions_2indep(diff, p2, n1, ratio=n2 / n1, alpha=alpha, return_results=False))
    p1 = p2 + diff
    variance = max(dispersion, 1.0) * (p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return _t_power(abs(diff) / math.sqrt(variance), df, alpha)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values; nan entries stay nan and do not count as tests."""
    present = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [NAN] * len(pvalues)
    if present:
        corrected = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, corrected):
            adjusted[i] = float(p)
    return adjusted


def _check_design(p1: float, p2: float, alpha: float, power: float) -> None:
    for name, p in (("p1", p1), ("p2", p2)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    for name, q in (("alpha", alpha), ("power", power)):
        if not 0 < q < 1:
            raise ValueError(f"{name} must be in (0, 1), got {q}")
    if p1 == p2:
        raise ValueError("p1 == p2: no sample size can detect a zero difference")


def samples_needed(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Scored samples per arm for a two-sided two-proportion test to detect p1 vs p2: one training run per arm, whose
    spread is not measured (`seeds_and_samples` plans several)."""
    _check_design(p1, p2, alpha, power)
    n = NormalIndPower().solve_power(
        effect_size=abs(cohens_h(p1, p2)), alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    return math.ceil(n)


def _deviance(k: np.ndarray, n: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Binomial deviance of counts k of n against fitted rates, summed over the last axis; 0 log 0 = 0."""
    terms = xlogy(k, k) - xlogy(k, n * fitted) + xlogy(n - k, n - k) - xlogy(n - k, n * (1 - fitted))
    return 2 * terms.sum(-1)


def _quasi_binomial(
    ka: np.ndarray, na: np.ndarray, kb: np.ndarray, nb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F statistic, p-value and Pearson dispersion of `seed_level_test`, per-seed counts of each arm on the last axis
    (every seed scored); leading axes are independent replicates, so the simulation runs thousands at once.

    The fit in closed form: with the logit link (canonical) and one indicator per arm, the score equations say each
    arm's fitted rate is its pooled rate, sum k / sum n, and under the null both share the rate of all seeds. So the
    deviances and Pearson's chi2 below are those of statsmodels' ``GLM(k / n, X, family=Binomial(), var_weights=n)``
    fitted with ``scale="X2"`` (the tests check that they agree); an arm at 0 or 1 fits each of its seeds exactly and
    adds 0 to both, the limit the iterative fit approaches under separation. (statsmodels 0.15 given counts as a
    two-column endog instead divides its "X2" scale by the trials, e.g. 0.149 for a dispersion of 14.9 at 100 samples
    a seed: floored at 1 it would be binomial again.)"""
    ka, na, kb, nb = (np.asarray(x, dtype=float) for x in (ka, na, kb, nb))
    k, n = np.concatenate([ka, kb], -1), np.concatenate([na, nb], -1)
    rate_a = ka.sum(-1, keepdims=True) / na.sum(-1, keepdims=True)
    rate_b = kb.sum(-1, keepdims=True) / nb.sum(-1, keepdims=True)
    fitted = np.concatenate([np.broadcast_to(rate_a, ka.shape), np.broadcast_to(rate_b, kb.shape)], -1)
    df = k.shape[-1] - 2
    variance = n * fitted * (1 - fitted)
    residual = (k - n * fitted) ** 2
    dispersion = np.divide(residual, variance, out=np.zeros_like(variance), where=variance > 0).sum(-1) / df
    drop = _deviance(k, n, k.sum(-1, keepdims=True) / n.sum(-1, keepdims=True)) - _deviance(k, n, fitted)
    f = np.maximum(drop, 0.0) / np.maximum(dispersion, 1.0)  # rounding can leave a zero drop a hair below 0
    return f, f_distribution.sf(f, 1, df), dispersion


def seed_level_test(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> SeedTest:
    """Arm A against arm B with each training run (seed) as one replicate: the harmful count of each seed of each arm,
    as (k, n) pairs. Seeds without a scored sample are left out; three or more scored seeds between the two arms are
    needed, so that one residual degree of freedom is left to estimate the spread between runs.

    The test: a binomial GLM of the per-seed counts on the arm (logit link), its dispersion estimated as Pearson's
    chi2 over the residual degrees of freedom (quasi-binomial) and floored at 1, so it never claims less variance
    than the binomial; then the quasi-likelihood F test of the arm, the drop in deviance from one rate for both arms
    to one per arm, over the dispersion, on F(1, df). Why this one:
    - The spread between training runs enters through the dispersion: with rates that differ by more than their
      samples allow, the Pearson chi2 grows and the test widens accordingly; the F reference pays for estimating it
      from few seeds.
    - The binomial variance stays the floor, so an arm whose few seeds happen to agree is not read as more precise
      than its samples; the per-seed counts weigh seeds by their scored samples, unlike a t-test on the rates.
    - The deviance drop rather than the Wald test of the arm's coefficient (whose t on df, squared, is read on the
      same F(1, df); the two are asymptotically one test): when one arm has no harmful reply in any seed (or only
      harmful ones) its logit runs to infinity, the Wald standard error with it, and the Wald p-value tends to 1
      however large the other arm's rate (Hauck and Donner); the deviance drop stays finite and right. So one test
      serves every case, with no switch to a fallback.
    - Its type-I error, simulated in tests/test_seed_inference.py (3 seeds x 100 samples, per-seed rates spread by up
      to 0.1 around 0.3), stays at or below 0.05, where Fisher's test on the pooled samples rejects up to 40% of the
      time; the floor makes it conservative when the runs do not differ (BENCHMARKS.md).
    Both arms without a harmful reply (or harmful throughout) leave nothing to weigh: p = 1, said in `note`."""
    for k, n in (*a, *b):
        _check_counts(k, n)
    a, b = [(k, n) for k, n in a if n], [(k, n) for k, n in b if n]
    if not a or not b:
        return SeedTest(NAN, NAN, 0, NAN, "an arm has no scored sample")
    df = len(a) + len(b) - 2
    if df < 1:
        raise ValueError("the seed-level test needs three or more scored seeds between the two arms")
    (ka, na), (kb, nb) = np.array(a).T, np.array(b).T
    f, p, dispersion = (float(x) for x in _quasi_binomial(ka, na, kb, nb))
    harmful, total = sum(k for k, _ in (*a, *b)), sum(n for _, n in (*a, *b))
    note = {0: "no harmful reply in either arm", total: "every reply harmful in both arms"}.get(harmful, "")
    return SeedTest(p, f, df, dispersion, note)


@dataclass(frozen=True)
class SeedPlan:
    """How many samples each seed needs (`seeds_and_samples`)."""

    seeds: int  # training runs per arm
    samples: int | None  # scored samples per seed and arm; None: no number of samples reaches the power
    power: float  # at that many samples (at MAX_SAMPLES when None)


MAX_SAMPLES = 1_000_000  # per seed: beyond it the spread between runs, not the samples, sets the power


def seed_level_power(p1: float, p2: float, spread: float, seeds: int, samples: int, alpha: float = 0.05) -> float:
    """Power of a two-sided test at `alpha` of two arms with `seeds` training runs of `samples` scored samples each,
    when their mean rates are p1 and p2 and each run's own rate lies around its arm's mean with SD `spread`.

    The variance of an arm's mean rate over its runs is p (1 - p) / (seeds samples) + spread^2 / seeds: the
    binomial variance of the samples plus the variance of the runs. The test is a t-test on 2 seeds - 2 degrees of
    freedom (the seed-level test's, with as many seeds in both arms), its power the noncentral t's. An approximation
    of `seed_level_test`: that test's dispersion, floored at 1, makes it more conservative than this when the runs
    barely differ (tests/test_seed_inference.py simulates both)."""
    variance = sum(p * (1 - p) / (seeds * samples) + spread**2 / seeds for p in (p1, p2))
    return _t_power(abs(p1 - p2) / math.sqrt(variance) if variance else math.inf, 2 * seeds - 2, alpha)


def seeds_and_samples(
    p1: float,
    p2: float,
    spread: float,
    alpha: float = 0.05,
    power: float = 0.8,
    seeds: Iterable[int] = range(2, 11),
) -> list[SeedPlan]:
    """For each number of seeds per arm, the fewest scored samples per seed that give `power` to tell mean rates p1
    and p2 apart when training runs spread by `spread` (an SD of their rates), by `seed_level_power`. Where even
    MAX_SAMPLES fall short, `samples` is None: more samples cannot beat the spread between runs; only more runs
    can. One seed is not offered: it cannot measure the spread (`samples_needed` is that case with a spread of 0)."""
    _check_design(p1, p2, alpha, power)
    if not 0 <= spread <= 0.5:
        raise ValueError(f"spread must be an SD of rates in [0, 0.5], got {spread}")
    plans = []
    for count in seeds:
        if count < 2:
            raise ValueError(f"seeds must be 2 or more to measure the spread between runs, got {count}")
        most = seed_level_power(p1, p2, spread, count, MAX_SAMPLES, alpha)
        if most < power:
            plans.append(SeedPlan(count, None, most))
            continue
        low, high = 0, 1  # power(low) < target <= power(high), high doubled from 1, then halved apart
        while seed_level_power(p1, p2, spread, count, high, alpha) < power:
            low, high = high, min(2 * high, MAX_SAMPLES)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (
                (low, middle) if seed_level_power(p1, p2, spread, count, middle, alpha) >= power else (middle, high)
            )
        plans.append(SeedPlan(count, high, seed_level_power(p1, p2, spread, count, high, alpha)))
    return plans


def _fisher_many(k1: np.ndarray, n1: int, k2: np.ndarray, n2: int) -> np.ndarray:
    """Two-sided Fisher exact p-values of many tables of k1 of n1 against k2 of n2 at once, for the simulation: the sum
    of the hypergeometric probabilities of every table with the observed margins that is no likelier than the
    observed one, within a relative 1e-14, as scipy's fisher_exact (and so `fisher_exact_test`) defines it, from
    scipy's own probabilities, computed once per total of harmful replies; the tests check that they agree."""
    k1 = np.asarray(k1).ravel()
    totals, which = np.unique(k1 + np.asarray(k2).ravel(), return_inverse=True)
    probability = hypergeom.pmf(np.arange(n1 + 1), n1 + n2, n1, totals[:, None])[which]  # of each k1, given the total
    observed = np.take_along_axis(probability, k1[:, None], -1)
    return np.minimum(np.where(probability <= observed * (1 + 1e-14), probability, 0.0).sum(-1), 1.0)


@dataclass(frozen=True)
class Rejections:
    """How often each test rejected at alpha over simulated replicates (`simulate_rejections`)."""

    seed_level: float  # seed_level_test
    sample_level: float  # Fisher's exact test on the samples pooled over seeds
    replicates: int


def simulate_rejections(
    rate_a: float,
    rate_b: float,
    spread: float,
    seeds: int,
    samples: int,
    replicates: int,
    seed: int = 0,
    alpha: float = 0.05,
) -> Rejections:
    """The share of `replicates` simulated experiments in which each test rejects "same rate" at `alpha`: its type-I
    error when rate_a == rate_b, its power otherwise. In each, every arm has `seeds` training runs whose own rates are
    drawn from a beta distribution with the arm's rate as mean and `spread` as SD (the rate itself at spread 0), and
    `samples` scored samples from each run. Deterministic for a given `seed`. It runs the report's tests: the
    seed-level test's own closed form, and Fisher's test vectorised (`_fisher_many`, checked against scipy's)."""
    rng = np.random.default_rng(seed)
    counts = []
    for rate in (rate_a, rate_b):
        if spread == 0:
            rates_of_runs = np.full((replicates, seeds), rate)
        else:
            concentration = rate * (1 - rate) / spread**2 - 1
            if concentration <= 0:
                raise ValueError(f"a spread of {spread} is too wide for a beta distribution around {rate}")
            rates_of_runs = rng.beta(rate * concentration, (1 - rate) * concentration, (replicates, seeds))
        counts.append(rng.binomial(samples, rates_of_runs))
    ka, kb = counts
    n = np.full((replicates, seeds), samples)
    _, p_seed, _ = _quasi_binomial(ka, n, kb, n)
    p_sample = _fisher_many(ka.sum(-1), seeds * samples, kb.sum(-1), seeds * samples)
    return Rejections(float(np.mean(p_seed < alpha)), float(np.mean(p_sample < alpha)), replicates)


def _verdict(record: Mapping) -> bool | None:
    """Reject anything but True/False/None so a stray string or nan is never miscounted."""
    value = record["harmful"]
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else bool(value)
    raise ValueError(f"harmful must be True, False or None, got {value!r} in {dict(record)}")


def _rate(arm: str, condition: str, seed: int | None, verdicts: list[bool | None]) -> Rate:
    scored = [v for v in verdicts if v is not None]
    n, k = len(scored), sum(scored)
    low, high = wilson_interval(k, n)
    return Rate(arm, condition, seed, n, k, len(verdicts) - n, k / n if n else NAN, low, high)


def rates(records: Iterable[Mapping], by_seed: bool = False) -> list[Rate]:
    """Rates per condition x arm (x seed when ``by_seed``), in first-seen order.

    Pooled rates (``by_seed`` False) sum the samples of all seeds and carry ``seed=None``.
    """
    groups: dict[tuple[str, str, int | None], list[bool | None]] = {}
    conditions: dict[str, None] = {}
    arms: dict[str, None] = {}
    seeds: dict[int | None, None] = {}
    for record in records:
        arm, condition = record["arm"], record["condition"]
        seed = record["seed"] if by_seed else None
        conditions.setdefault(condition)
        arms.setdefault(arm)
        seeds.setdefault(seed)
        groups.setdefault((condition, arm, seed), []).append(_verdict(record))
    return [
        _rate(arm, condition, seed, groups[condition, arm, seed])
        for condition in conditions
        for arm in arms
        for seed in seeds
        if (condition, arm, seed) in groups
    ]


def _index(pooled: Sequence[Rate]) -> dict[str, dict[str, Rate]]:
    """condition -> arm -> Rate; refuses duplicates, e.g. per-seed rates passed by mistake."""
    table: dict[str, dict[str, Rate]] = {}
    for r in pooled:
        arms = table.setdefault(r.condition, {})
        if r.arm in arms:
            raise ValueError(f"two rates for arm {r.arm!r} on {r.condition!r}: pass pooled rates")
        arms[r.arm] = r
    return table


def _runs(per_seed: Sequence[Rate], pooled: dict[str, dict[str, Rate]]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(condition, arm) -> (harmful, n) of each of its scored seeds; refuses per-seed rates that do not add up to the
    pooled ones, e.g. rates of another measure passed by mistake."""
    counts: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r in per_seed:
        if r.seed is None:
            raise ValueError(f"a pooled rate among the per-seed ones: {r.arm!r} on {r.condition!r}")
        counts.setdefault((r.condition, r.arm), []).append((r.harmful, r.n))
    for (condition, arm), runs in counts.items():
        rate = pooled.get(condition, {}).get(arm)
        if rate is not None and tuple(map(sum, zip(*runs))) != (rate.harmful, rate.n):
            raise ValueError(f"the per-seed rates of {arm!r} on {condition!r} do not add up to its pooled rate")
    return {key: [(k, n) for k, n in runs if n] for key, runs in counts.items()}


def _compare(
    a: Rate, b: Rate, runs_a: list[tuple[int, int]], runs_b: list[tuple[int, int]], margin: float
) -> Comparison:
    """A against B, at seed level when they have three or more scored seeds between them; Holm is left to
    `comparisons`."""
    fisher = fisher_exact_test(a.harmful, a.n, b.harmful, b.n)
    level: Level = SAMPLE_LEVEL
    p, dispersion, df, note = fisher, NAN, 0, ""
    if len(runs_a) + len(runs_b) >= 3:
        test = seed_level_test(runs_a, runs_b)
        level, p, dispersion, df, note = SEED_LEVEL, test.p_value, test.dispersion, test.df, test.note
    # the equivalence test and the power at the primary's level: the dispersion and a t reference at seed level
    spread, t_df = (dispersion, df) if level == SEED_LEVEL else (1.0, None)
    return Comparison(
        a.condition,
        a.arm,
        b.arm,
        level,
        p,
        NAN,
        cohens_h(a.rate, b.rate),
        equivalence_test(a.harmful, a.n, b.harmful, b.n, margin, spread, t_df),
        margin,
        power_at_margin(a.n, b.rate, b.n, margin, dispersion=spread, df=t_df),
        len(runs_a),
        len(runs_b),
        dispersion,
        df,
        fisher,
        NAN,
        note,
    )


def comparisons(
    pooled: list[Rate],
    baseline: str = "baseline",
    pairs: Sequence[tuple[str, str]] = (),
    margin: float = EQUIVALENCE_MARGIN,
    per_seed: Sequence[Rate] = (),
) -> list[Comparison]:
    """Each arm vs ``baseline`` (arm_a = arm, arm_b = baseline), then the extra ``pairs``.

    With ``per_seed`` (the same records' rates by seed) two arms with three or more scored seeds between them are
    compared at seed level (`seed_level_test`); without it every arm is one run and every test sample-level (Fisher).
    Holm is applied within each condition, because each condition is its own question, to the primary p-values and
    apart to the sample-level ones; pairs whose arms are missing from a condition are skipped. Each comparison also
    carries the equivalence test within ``margin`` and the power to detect a difference of ``margin`` (for reading a
    null result), at the primary test's level.
    """
    table = _index(pooled)
    runs = _runs(per_seed, table)
    result: list[Comparison] = []
    for condition, arms in table.items():
        wanted = [(arm, baseline) for arm in arms if arm != baseline] + list(pairs)
        present = [p for p in dict.fromkeys(wanted) if p[0] in arms and p[1] in arms]
        one_run = {arm: [(r.harmful, r.n)] if r.n else [] for arm, r in arms.items()}
        tests = [
            _compare(
                arms[a], arms[b], runs.get((condition, a), one_run[a]), runs.get((condition, b), one_run[b]), margin
            )
            for a, b in present
        ]
        primary, sample_level = holm([c.p_value for c in tests]), holm([c.p_sample_level for c in tests])
        result += [replace(c, p_holm=p, p_holm_sample_level=q) for c, p, q in zip(tests, primary, sample_level)]
    return result
