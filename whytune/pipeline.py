"""Every stage for every arm of an experiment, skipping what is already done with the same settings."""

from __future__ import annotations

import gc
import time

from data.build import build
from eval.run import evaluate
from train.sft import train_arm
from whytune.config import WhytuneConfig, load_arm
from whytune.runs import RunPaths, provenance, write_json


def run(cfg: WhytuneConfig) -> str:
    """data -> train -> eval -> report; returns the results table. Safe to rerun after an interruption."""
    paths = RunPaths.of(cfg)
    write_json(paths.root / "provenance.json", provenance(cfg))
    timings = {}
    start = time.perf_counter()
    built = build(cfg)
    timings["data"] = time.perf_counter() - start
    for arm, rows in built.items():
        print(f"[data] {arm}: {len(rows)} examples in {paths.data(arm)}")
    trained = [(arm, seed) for arm in cfg.arms if load_arm(arm).writer for seed in cfg.seeds]
    for number, (arm, seed) in enumerate(trained, start=1):
        print(f"[train] {number}/{len(trained)}: {arm} seed {seed}")
        start = time.perf_counter()
        print(f"[train] adapter in {train_arm(cfg, arm, seed)}")
        timings[f"train/{arm}/seed{seed}"] = time.perf_counter() - start
        gc.collect()  # the finished trainer holds a model and its optimiser state
    start = time.perf_counter()
    table = evaluate(cfg)
    timings["eval"] = time.perf_counter() - start
    write_json(paths.root / "timings.json", {k: round(v, 2) for k, v in timings.items()})
    return table
