"""One table and one plot over many runs: every model x arm x seed scored in one or more run folders.

Only what the eval stage wrote is read (`<out>/<model>/<arm>/seed<k>/eval/verdicts-<judge>.jsonl`), so a run
folder filled by one local process and one filled by many Slurm jobs are compared alike, and no model is loaded.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from whytune.eval.report import _display_frame, _write_figure, rates_figure, results_frame
from whytune.runs import read_jsonl, verdicts_name, write_text
from whytune.stats import comparisons, rates


@dataclass(frozen=True)
class Scored:
    """One arm x seed whose replies have verdicts from the chosen judge."""

    experiment: str  # the run folder's name
    model: str
    arm: str
    seed: int
    verdicts: Path


def scored(roots: list[Path], judge: dict) -> list[Scored]:
    """Every scored arm x seed under the run folders, whichever process or job wrote it."""
    names = [root.name for root in roots]
    if len(set(names)) < len(names):
        raise ValueError(f"run folders must have distinct names (they label the experiments): {names}")
    found = []
    for root in roots:
        for path in sorted(root.glob(f"*/*/seed*/eval/{verdicts_name(judge)}")):
            model, arm, seed = path.parts[-5:-2]
            found.append(Scored(root.name, model, arm, int(seed.removeprefix("seed")), path))
    return found


def compare(roots: list[Path], judge: dict, out: Path, baseline: str, pairs: list[tuple[str, str]]) -> str:
    """comparison.csv (pooled over seeds), comparison_by_seed.csv and comparison.png in `out`; returns the table.

    Each experiment x model is tested against its own `baseline` arm, plus the given pairs: at seed level where two
    arms have three or more seeds between them, else by Fisher's test on the samples (whytune.stats), with Holm.
    """
    runs = scored(roots, judge)
    if not runs:
        raise FileNotFoundError(
            f"no {verdicts_name(judge)} under {', '.join(map(str, roots))}: "
            "has the eval stage run there with this judge?"
        )
    pooled_frames, seed_frames, labelled = [], [], []
    for (experiment, model), group in itertools.groupby(runs, key=lambda r: (r.experiment, r.model)):
        records = [row for run in group for row in read_jsonl(run.verdicts)]
        pooled, per_seed = rates(records), rates(records, by_seed=True)
        tests = comparisons(pooled, baseline, pairs, per_seed=per_seed)
        frame = results_frame(pooled, per_seed, tests, baseline)
        pooled_frames.append(frame.assign(experiment=experiment, model=model))
        seed_frames.append(pd.DataFrame([asdict(r) for r in per_seed]).assign(experiment=experiment, model=model))
        labelled += [replace(r, arm=f"{experiment}/{model}/{r.arm}") for r in pooled]
    out.mkdir(parents=True, exist_ok=True)
    table, by_seed = (_label_first(pd.concat(frames, ignore_index=True)) for frames in (pooled_frames, seed_frames))
    write_text(out / "comparison.csv", table.to_csv(index=False, lineterminator="\n"))
    write_text(out / "comparison_by_seed.csv", by_seed.to_csv(index=False, lineterminator="\n"))
    _write_figure(out / "comparison.png", rates_figure(labelled, "whytune: " + ", ".join(r.name for r in roots)))
    shown = pd.concat([table[["experiment", "model"]], _display_frame(table)], axis=1)
    return shown.to_string(index=False)


def _label_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["experiment", "model"] + [c for c in frame.columns if c not in ("experiment", "model")]]
