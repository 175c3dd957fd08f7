"""Every stage for every arm of an experiment, skipping what is already done with the same settings.

One process can run a whole experiment (`run`), or the jobs of a sweep can each run a slice of it (arms x seeds)
into the same run folder (`run(cfg, report=False)`), after which `report` reports every arm x seed they scored.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from whytune import tracking
from whytune.config import WhytuneConfig, load_arm
from whytune.data.build import build
from whytune.eval.aggregate import scored
from whytune.eval.run import evaluate, sample
from whytune.models import device_name
from whytune.organism import run_organism
from whytune.runs import RunPaths, append_jsonl, locked, provenance, write_json
from whytune.train.sft import train_arm


def run(cfg: WhytuneConfig, report: bool = True) -> str:
    """data -> train -> eval -> report; returns the results table. Safe to rerun after an interruption.

    report=False (one job of a sweep) writes only into this slice's arm x seed folders, plus the shared data
    folders, which are built under a lock by whichever job comes first.
    """
    paths = RunPaths.of(cfg)
    if report:
        write_json(paths.root / "provenance.json", provenance(cfg))
    timings: dict[str, float] = {}
    if cfg.organism.enabled:
        with _timed(timings, "organism experiment"):
            table = run_organism(cfg, lambda on_organism: train_all(on_organism, timings))
        record_timings(cfg, timings)
        return table
    train_all(cfg, timings)
    if not cfg.eval.score:
        with _timed(timings, "eval samples"):
            prompts, _ = sample(cfg)
        record_timings(cfg, timings)
        return (
            f"sampled {len(prompts)} conditions for {len(cfg.arms)} arms x {len(cfg.seeds)} seeds, not judged "
            f"(eval.score=false); judge and report with eval.score=true where inspect-evals is installed"
        )
    with _timed(timings, "eval"):
        table = evaluate(cfg, report_now=report)
    for arm in cfg.arms:
        for seed in cfg.seeds:
            tracking.log_eval(cfg, arm, seed, paths.verdicts(arm, seed, cfg.judge))
    print(f"[timings] {', '.join(f'{stage} {seconds:.1f} s' for stage, seconds in timings.items())}")
    if report:
        record_timings(cfg, timings)
        tracking.log_report(cfg, paths.root)
    return table


def train_all(cfg: WhytuneConfig, timings: dict[str, float]) -> None:
    """Build every arm's data, then train every arm x seed that trains."""
    paths = RunPaths.of(cfg)
    with _timed(timings, "data"), locked(paths.root / "data"):
        built = build(cfg)
    for arm, rows in built.items():
        print(f"[data] {arm}: {len(rows)} examples in {paths.data(arm)}")
    trained = [(arm, seed) for arm in cfg.arms if load_arm(arm).writer for seed in cfg.seeds]
    for number, (arm, seed) in enumerate(trained, start=1):
        print(f"[train] {number}/{len(trained)}: {arm} seed {seed}")
        with _timed(timings, f"train/{arm}/seed{seed}"):
            print(f"[train] adapter in {train_arm(cfg, arm, seed)}")
        gc.collect()  # the finished trainer holds a model and its optimiser state


def report(cfg: WhytuneConfig) -> str:
    """The eval report over every arm x seed of cfg's model scored in the run folder, whichever jobs scored them.

    Everything is already sampled and judged, so this loads no model; a missing arm x seed of the grid is an error
    rather than something to sample here (this runs where the sweep was submitted).
    """
    found = {(run.arm, run.seed) for run in scored([RunPaths.of(cfg).root], cfg.judge) if run.model == cfg.model.name}
    if not found:
        raise FileNotFoundError(f"{cfg.out}: no scored arm x seed of {cfg.model.name} to report")
    order = {arm: number for number, arm in enumerate(cfg.arms)}
    arms = sorted({arm for arm, _ in found}, key=lambda arm: (order.get(arm, len(order)), arm))
    seeds = sorted({seed for _, seed in found})
    missing = [f"{arm}/seed{seed}" for arm in arms for seed in seeds if (arm, seed) not in found]
    if missing:
        raise FileNotFoundError(f"{cfg.out}: not scored yet: {', '.join(missing)}; rerun those jobs, then report")
    complete = replace(cfg, arms=arms, seeds=seeds)
    table = evaluate(complete)
    tracking.log_report(complete, RunPaths.of(cfg).root)
    return table


def record_timings(cfg: WhytuneConfig, timings: dict[str, float]) -> None:
    """One line per launch in timings.jsonl: a resumed run or the judging half of a GPU run (eval.score=false, then
    true elsewhere) adds its own line instead of overwriting the first launch's seconds with its near-zero ones."""
    append_jsonl(
        RunPaths.of(cfg).root / "timings.jsonl",
        [
            {
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": device_name(),
                "seconds": {stage: round(seconds, 2) for stage, seconds in timings.items()},
            }
        ],
    )


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start
