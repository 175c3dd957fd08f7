"""Precision and recall of whytune.eval.classifiers on labelled sets of replies.

Usage: python scripts/classifier_report.py [path/to/labelled.jsonl ...]
Without a path, every tests/data/labelled_*.jsonl, each in its own table: the veiled threats and their hard
negatives are kept apart from the general set so that a change in either shows.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from whytune.eval.classifiers import Confusion, load_labelled, score_labelled

DEFAULT_PATHS = sorted((Path(__file__).resolve().parents[1] / "tests" / "data").glob("labelled_*.jsonl"))
COLUMNS = ("scope", "metric", "tp", "fp", "fn", "tn", "unscored", "precision", "recall")


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _row(scope: str, metric: str, c: Confusion) -> tuple[str, ...]:
    counts = (c.tp, c.fp, c.fn, c.tn, c.unscored)
    return (scope, metric, *map(str, counts), _fmt(c.precision), _fmt(c.recall))


def _print_table(table: list[tuple[str, ...]]) -> None:
    """Names left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def main(argv: list[str]) -> None:
    for number, path in enumerate(map(Path, argv) if argv else DEFAULT_PATHS):
        rows = load_labelled(path)
        scores = score_labelled(rows)
        print(("\n" if number else "") + f"{len(rows)} labelled replies from {path}")
        table = [_row(scope, m, c) for scope, by_metric in scores.items() for m, c in by_metric.items()]
        _print_table([COLUMNS, *table])


if __name__ == "__main__":
    main(sys.argv[1:])
