"""How many scored samples per arm an eval needs: ``python -m whytune.eval.power --p1 0.2 --p2 0.05``; with
``--spread 0.05`` (the SD of the harmful rate from one training run to the next), how many seeds and samples per
seed, since more samples cannot make up for too few training runs (whytune.stats.seeds_and_samples)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

from whytune.stats import samples_needed, seeds_and_samples

TABLE_BASELINES = (0.05, 0.1, 0.2, 0.3, 0.5)
TABLE_REDUCTIONS = (0.25, 0.5, 0.75)


def power_table(alpha: float, power: float) -> pd.DataFrame:
    """Samples per arm to detect a relative drop from common baseline harmful rates."""
    return pd.DataFrame(
        {
            f"-{100 * cut:.0f}%": [samples_needed(p, p * (1 - cut), alpha, power) for p in TABLE_BASELINES]
            for cut in TABLE_REDUCTIONS
        },
        index=pd.Index([f"{p:g}" for p in TABLE_BASELINES], name="baseline rate"),
    )


def seed_plan(p1: float, p2: float, spread: float, alpha: float, power: float) -> str:
    """Scored samples per seed and arm for each number of seeds per arm, as a table to print."""
    plans = seeds_and_samples(p1, p2, spread, alpha, power)
    frame = pd.DataFrame(
        {
            "seeds per arm": [plan.seeds for plan in plans],
            "samples per seed": [plan.samples if plan.samples else "none suffices" for plan in plans],
            "power": [f"{plan.power:.2f}" for plan in plans],
        }
    )
    heading = (
        f"Seed-level test of p1={p1:g} against p2={p2:g}, runs spread by SD {spread:g}, alpha={alpha:g} two-sided, "
        f"power={power:g}:"
    )
    return heading + "\n" + frame.to_string(index=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m whytune.eval.power", description=__doc__)
    parser.add_argument("--p1", type=float, help="harmful rate of one arm, e.g. the baseline")
    parser.add_argument("--p2", type=float, help="harmful rate of the other arm")
    parser.add_argument("--alpha", type=float, default=0.05, help="two-sided significance level")
    parser.add_argument("--power", type=float, default=0.8, help="chance of detecting the difference")
    parser.add_argument(
        "--spread",
        type=float,
        help="SD of an arm's harmful rate between training runs (seeds): plan seeds and samples per seed for the "
        "seed-level test instead of samples for one run",
    )
    parser.add_argument("--table", action="store_true", help="print samples per arm for common baselines")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.p1 is None) != (args.p2 is None) or (args.p1 is None and not args.table):
        parser.error("give both --p1 and --p2, or --table")
    if args.spread is not None and args.p1 is None:
        parser.error("--spread plans seeds for a difference: give --p1 and --p2 too")
    try:
        if args.p1 is not None and args.spread is not None:
            print(seed_plan(args.p1, args.p2, args.spread, args.alpha, args.power))
        elif args.p1 is not None:
            n = samples_needed(args.p1, args.p2, args.alpha, args.power)
            print(
                f"{n} scored samples per arm (p1={args.p1:g}, p2={args.p2:g}, "
                f"alpha={args.alpha:g} two-sided, power={args.power:g})"
            )
        if args.table:
            print(f"Scored samples per arm to detect a relative drop (alpha={args.alpha:g}, power={args.power:g}):")
            print(power_table(args.alpha, args.power).to_string())
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
