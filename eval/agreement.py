"""How far two judges agree: Cohen's kappa with a bootstrap interval, between two verdict files on the same replies.

Run: python -m whytune.eval.agreement A.jsonl B.jsonl [--field classifier_verdict|harmful] [--resamples N] [--seed S]

Each file is a verdicts file (rows with `id` and the verdict fields, as `python -m whytune.eval.classify` writes
them) or a labelled set (`tests/data/labelled_*.jsonl`, whose `classifier_label` and `label` stand for
`classifier_verdict` and `harmful`). Rows are matched by `id`. The default field is the judge's own verdict,
`classifier_verdict`: the final `harmful` also holds the published action rule, the same for any judge, whose many
easy "no"s would flatter agreement between judges. A null verdict (unscored) leaves its row out, counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from statsmodels.stats.inter_rater import cohens_kappa

# A verdicts file's field, then the names a labelled set gives it (score_labelled reads `label` when a row has no
# `classifier_label`).
FIELDS = {"classifier_verdict": ("classifier_verdict", "classifier_label", "label"), "harmful": ("harmful", "label")}
RESAMPLES = 2000
DESCRIPTION = (
    "Cohen's kappa with a bootstrap interval between two verdict files (or a labelled set) on the same replies."
)


class AgreementError(ValueError):
    """A file that cannot be compared, with the file (and line) to look at."""


@dataclass(frozen=True)
class Agreement:
    field: str
    table: tuple[tuple[int, int], tuple[int, int]]  # rows A yes/no, columns B yes/no
    only_a: int  # ids in A alone
    only_b: int  # ids in B alone
    unscored: int  # ids in both, left out because one side's verdict is null
    kappa: float  # nan when undefined: both sides gave one and the same answer to every reply
    ci: tuple[float, float]  # percentile bootstrap 95% interval over matched replies
    resamples: int
    seed: int

    @property
    def matched(self) -> int:
        return sum(map(sum, self.table))

    @property
    def agreed(self) -> int:
        return self.table[0][0] + self.table[1][1]

    @property
    def observed(self) -> float:
        return self.agreed / self.matched


def read_verdicts(path: Path, field: str) -> dict[str, bool | None]:
    """id -> verdict from a verdicts file or a labelled set; every bad line is an error naming file and line."""
    if not path.is_file():
        raise AgreementError(f"{path}: no such file")
    verdicts: dict[str, bool | None] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                row_id, verdict = _parse(line, field, f"{path}:{number}")
                if row_id in verdicts:
                    raise AgreementError(f"{path}:{number}: id {row_id!r} appears twice")
                verdicts[row_id] = verdict
    return verdicts


def _parse(line: str, field: str, where: str) -> tuple[str, bool | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise AgreementError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise AgreementError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
        raise AgreementError(f"{where}: no string or integer `id`")
    key = next((name for name in FIELDS[field] if name in row), None)
    if key is None:
        raise AgreementError(f"{where}: none of {', '.join(FIELDS[field])}")
    if row[key] is not None and not isinstance(row[key], bool):
        raise AgreementError(f"{where}: {key} is {row[key]!r}, not true, false or null")
    return str(row["id"]), row[key]


def kappa(table: np.ndarray) -> float:
    """Cohen's kappa of a 2x2 table (statsmodels); nan where undefined, as when both sides never vary."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(cohens_kappa(table, return_results=False))


def agreement(
    a: Mapping[str, bool | None],
    b: Mapping[str, bool | None],
    field: str = "classifier_verdict",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Agreement:
    """Kappa over the ids both sides scored, with a seeded percentile bootstrap over those replies.

    Resampling replies with replacement is drawing the 2x2 table from a multinomial with the observed cell shares,
    so the bootstrap draws tables directly: the same distribution, at a cost that does not grow with the replies.
    """
    shared = [k for k in a if k in b]
    pairs = [(a[k], b[k]) for k in shared if a[k] is not None and b[k] is not None]
    if not pairs:
        raise AgreementError("no reply has a verdict on both sides")
    counts = np.zeros((2, 2), dtype=int)
    for verdict_a, verdict_b in pairs:
        counts[int(not verdict_a), int(not verdict_b)] += 1  # row/column 0 = yes
    draws = np.random.default_rng(seed).multinomial(len(pairs), counts.ravel() / len(pairs), size=resamples)
    boot = np.array([kappa(draw.reshape(2, 2)) for draw in draws])
    boot = boot[np.isfinite(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (math.nan, math.nan)
    return Agreement(
        field=field,
        table=((int(counts[0, 0]), int(counts[0, 1])), (int(counts[1, 0]), int(counts[1, 1]))),
        only_a=len(a) - len(shared),
        only_b=len(b) - len(shared),
        unscored=len(shared) - len(pairs),
        kappa=kappa(counts),
        ci=(float(low), float(high)),
        resamples=resamples,
        seed=seed,
    )


def compare_files(
    path_a: Path, path_b: Path, field: str = "classifier_verdict", resamples: int = RESAMPLES, seed: int = 0
) -> Agreement:
    """Agreement between two files; an error names both when their ids do not meet."""
    a, b = read_verdicts(path_a, field), read_verdicts(path_b, field)
    if not any(k in b for k in a):
        raise AgreementError(f"no id of {path_a} ({len(a)} rows) is in {path_b} ({len(b)} rows): not the same replies")
    try:
        return agreement(a, b, field, resamples, seed)
    except AgreementError as error:
        raise AgreementError(f"{path_a} and {path_b}: {error}") from None


def render(result: Agreement, path_a: Path, path_b: Path) -> str:
    lo, hi = result.ci
    (yy, yn), (ny, nn) = result.table
    value = "undefined (both sides gave one and the same answer to every reply)"
    if not math.isnan(result.kappa):
        value = f"{result.kappa:.3f}, 95% bootstrap interval [{lo:.3f}, {hi:.3f}]"
        value += f" ({result.resamples:,} resamples, seed {result.seed})"
    return "\n".join(
        [
            f"A: {path_a}",
            f"B: {path_b}",
            f"field: {result.field}",
            f"matched: {result.matched} {'reply' if result.matched == 1 else 'replies'} scored on both sides"
            f" (unmatched: {result.only_a} only in A, {result.only_b} only in B;"
            f" {result.unscored} matched but unscored on a side, left out)",
            f"{'':6}{'B yes':>7}{'B no':>7}",
            f"{'A yes':6}{yy:>7}{yn:>7}",
            f"{'A no':6}{ny:>7}{nn:>7}",
            f"observed agreement: {result.observed:.3f} ({result.agreed}/{result.matched})",
            f"Cohen's kappa: {value}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m whytune.eval.agreement", description=DESCRIPTION)
    parser.add_argument("a", type=Path, help="verdicts file or labelled set")
    parser.add_argument("b", type=Path, help="verdicts file or labelled set, on the same replies")
    parser.add_argument("--field", choices=sorted(FIELDS), default="classifier_verdict")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    try:
        result = compare_files(args.a, args.b, args.field, args.resamples, args.seed)
    except AgreementError as error:
        sys.exit(f"error: {error}")
    print(render(result, args.a, args.b))


if __name__ == "__main__":
    main()
