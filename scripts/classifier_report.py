"""Precision and recall of eval.classifiers on a labelled set of replies.

Usage: python scripts/classifier_report.py [path/to/labelled.jsonl]
"""

from __future__ import annotations

import sys
from pathlib import Path

from eval.classifiers import Confusion, load_labelled, score_labelled

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "labelled_replies.jsonl"
COLUMNS = ("scope", "metric", "tp", "fp", "fn", "tn", "unscored", "precision", "recall")


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN when undefined


def _row(scope: str, metric: str, c: Confusion) -> tuple[str, ...]:
    return (scope, metric, str(c.tp), str(c.fp), str(c.fn), str(c.tn), str(c.unscored), _fmt(c.precision), _fmt(c.recall))


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else DEFAULT_PATH
    rows = load_labelled(path)
    scores = score_labelled(rows)
    table = [COLUMNS] + [_row(scope, metric, c) for scope, by_metric in scores.items() for metric, c in by_metric.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    print(f"{len(rows)} labelled replies from {path}")
    for r in table:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main(sys.argv[1:])
