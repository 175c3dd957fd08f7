"""Precision and recall of whytune.eval.classifiers on a labelled set of replies.

Usage: python scripts/classifier_report.py [path/to/labelled.jsonl]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from whytune.eval.classifiers import Confusion, load_labelled, score_labelled

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "labelled_replies.jsonl"
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
    path = Path(argv[0]) if argv else DEFAULT_PATH
    rows = load_labelled(path)
    scores = score_labelled(rows)
    print(f"{len(rows)} labelled replies from {path}")
    _print_table([COLUMNS] + [_row(scope, m, c) for scope, by_metric in scores.items() for m, c in by_metric.items()])


if __name__ == "__main__":
    main(sys.argv[1:])
