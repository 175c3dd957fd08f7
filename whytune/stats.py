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
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

NAN = float("nan")


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


def comparisons(
    pooled: list[Rate], baseline: str = "baseline", pairs: Sequence[tuple[str, str]] = ()
) -> list[Comparison]:
    """Each arm vs ``baseline`` (arm_a = arm, arm_b = baseline), then the extra ``pairs``.

    Holm is applied within each condition, because each condition is its own question;
    pairs whose arms are missing from a condition are skipped.
    """
    result: list[Comparison] = []
    for condition, arms in _index(pooled).items():
        wanted = [(arm, baseline) for arm in arms if arm != baseline] + list(pairs)
        present = [p for p in dict.fromkeys(wanted) if p[0] in arms and p[1] in arms]
        raw = [_compare(arms[a], arms[b]) for a, b in present]
        adjusted = holm([p for p, _ in raw])
        result += [Comparison(condition, a, b, p, p_adj, h) for (a, b), (p, h), p_adj in zip(present, raw, adjusted)]
    return result
