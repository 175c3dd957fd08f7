"""Agreement of whytune.eval.classifiers with labelled sets of replies, per file and per split.

Usage: python scripts/classifier_report.py [path/to/labelled.jsonl ...]
Without a path, every tests/data/labelled_*.jsonl, each in its own table: the veiled threats and their hard
negatives are kept apart from the general set so that a change in either shows. A file whose rows carry a `split`
gets one table per split and one for all of them: "dev" holds the cases the rules were developed against, "held_out"
cases set aside before the rules were written (the honest figure), "probe" hard negatives written afterwards to
attack the rules. False harmful (fp) is the worse error: a miss only undercounts.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from whytune.eval.classifiers import Confusion, load_labelled, score_labelled

DEFAULT_PATHS = sorted((Path(__file__).resolve().parents[1] / "tests" / "data").glob("labelled_*.jsonl"))
COLUMNS = (
    "scope",
    "metric",
    "agreement",
    "false harmful",
    "false harmless",
    "tp",
    "tn",
    "unscored",
    "precision",
    "recall",
)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _row(scope: str, metric: str, c: Confusion) -> tuple[str, ...]:
    counts = (c.fp, c.fn, c.tp, c.tn, c.unscored)
    return (scope, metric, _fmt(c.agreement), *map(str, counts), _fmt(c.precision), _fmt(c.recall))


def _print_table(table: list[tuple[str, ...]]) -> None:
    """Names left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def splits(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows by their `split`, then all of them; a file without splits is one group, "all"."""
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(row.get("split", "all"), []).append(row)
    return by_split if set(by_split) == {"all"} else {**by_split, "all": rows}


def main(argv: list[str]) -> None:
    for number, path in enumerate(map(Path, argv) if argv else DEFAULT_PATHS):
        rows = load_labelled(path)
        print(("\n" if number else "") + f"{len(rows)} labelled replies from {path.name}")
        for split, members in splits(rows).items():
            scores = score_labelled(members)
            print(f"split {split}: {len(members)} replies")
            table = [_row(scope, m, c) for scope, by_metric in scores.items() for m, c in by_metric.items()]
            _print_table([COLUMNS, *table])


if __name__ == "__main__":
    main(sys.argv[1:])
