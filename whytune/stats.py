"""Statistics for comparing harmful-behaviour rates between fine-tuning arms.

Verdicts are ``True`` (harmful), ``False`` (harmless) or ``None`` (unscored).
Unscored samples never enter a denominator, so a judge that fails to answer
cannot make an arm look safer; they are still counted so reports can show them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import fisher_exact, norm
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


@dataclass(frozen=True)
class Comparison:
    """Arm A against arm B on one condition; ``cohens_h`` > 0 means A is more harmful."""

    condition: str
    arm_a: str
    arm_b: str
    p_value: float
    p_holm: float
    cohens_h: float
    # Two one-sided tests that |rate A - rate B| < margin, an absolute difference in rates (equivalence_test): below
    # 0.05, the arms are equivalent within the margin.
    p_equivalence: float
    margin: float
    power: float  # at alpha 0.05, of detecting a difference of the margin at these n and B's rate (power_at_margin)


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


def equivalence_test(k1: int, n1: int, k2: int, n2: int, margin: float) -> float:
    """Two one-sided tests (TOST) for two independent proportions: the p-value of "the rates differ by less than
    `margin`" (H0: |p1 - p2| >= margin), the larger of the two one-sided p-values. Each is Miettinen and Nurminen's
    score test, as in statsmodels' ``tost_proportions_2indep(k1, n1, k2, n2, -margin, margin, method="score")``,
    with the rates under its null from `_restricted_mle`. Below 0.05: equivalent within the margin (the 90% score
    interval of the difference lies inside +-margin). nan when an arm has no scored sample."""
    _check_counts(k1, n1)
    _check_counts(k2, n2)
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    if n1 == 0 or n2 == 0:
        return NAN
    above_lower = float(norm.sf(_score_z(k1, n1, k2, n2, -margin)))  # H0: p1 - p2 <= -margin
    below_upper = float(norm.cdf(_score_z(k1, n1, k2, n2, margin)))  # H0: p1 - p2 >= margin
    return max(above_lower, below_upper)


def power_at_margin(n1: int, p2: float, n2: int, margin: float, alpha: float = 0.05) -> float:
    """Power of a two-sided two-proportion z-test at `alpha` (statsmodels' power_proportions_2indep) to detect arm 1
    differing by `margin` from arm 2's rate `p2`, at n1 and n2 samples; the difference is taken towards 50%, the
    direction that is harder to detect. A normal approximation: at a handful of events it overstates the power of
    Fisher's exact test. nan when an arm has no scored sample."""
    if n1 == 0 or n2 == 0 or math.isnan(p2):
        return NAN
    towards_half = (margin, -margin) if p2 < 0.5 else (-margin, margin)
    diff = next((d for d in towards_half if 0 <= p2 + d <= 1), None)
    if diff is None:  # a margin above 50% from a rate near the middle
        return NAN
    return float(power_proportions_2indep(diff, p2, n1, ratio=n2 / n1, alpha=alpha, return_results=False))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values; nan entries stay nan and do not count as tests."""
    present = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [NAN] * len(pvalues)
    if present:
        corrected = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, corrected):
            adjusted[i] = float(p)
    return adjusted


def samples_needed(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Scored samples per arm for a two-sided two-proportion test to detect p1 vs p2."""
    for name, p in (("p1", p1), ("p2", p2)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    for name, q in (("alpha", alpha), ("power", power)):
        if not 0 < q < 1:
            raise ValueError(f"{name} must be in (0, 1), got {q}")
    if p1 == p2:
        raise ValueError("p1 == p2: no sample size can detect a zero difference")
    n = NormalIndPower().solve_power(
        effect_size=abs(cohens_h(p1, p2)), alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    return math.ceil(n)


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


def _compare(a: Rate, b: Rate) -> tuple[float, float]:
    """Raw Fisher p-value and Cohen's h of A against B."""
    return fisher_exact_test(a.harmful, a.n, b.harmful, b.n), cohens_h(a.rate, b.rate)


def _equivalence(a: Rate, b: Rate, margin: float) -> tuple[float, float, float]:
    """TOST p-value, margin and power at the margin of A against B."""
    return equivalence_test(a.harmful, a.n, b.harmful, b.n, margin), margin, power_at_margin(a.n, b.rate, b.n, margin)


def comparisons(
    pooled: list[Rate],
    baseline: str = "baseline",
    pairs: Sequence[tuple[str, str]] = (),
    margin: float = EQUIVALENCE_MARGIN,
) -> list[Comparison]:
    """Each arm vs ``baseline`` (arm_a = arm, arm_b = baseline), then the extra ``pairs``.

    Holm is applied within each condition, because each condition is its own question;
    pairs whose arms are missing from a condition are skipped. Each comparison also carries the equivalence test
    within ``margin`` and the power to detect a difference of ``margin`` (for reading a null result).
    """
    result: list[Comparison] = []
    for condition, arms in _index(pooled).items():
        wanted = [(arm, baseline) for arm in arms if arm != baseline] + list(pairs)
        present = [p for p in dict.fromkeys(wanted) if p[0] in arms and p[1] in arms]
        raw = [_compare(arms[a], arms[b]) for a, b in present]
        adjusted = holm([p for p, _ in raw])
        result += [
            Comparison(condition, a, b, p, p_adj, h, *_equivalence(arms[a], arms[b], margin))
            for (a, b), (p, h), p_adj in zip(present, raw, adjusted)
        ]
    return result
