"""Hydra callback: once every job of a sweep has finished, report the run folder they filled together."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from whytune.config import validate
from whytune.eval.aggregate import compare, scored
from whytune.runner import report


class ReportAfterSweep(Callback):
    """Runs where the sweep was submitted, after the launcher (local or Slurm) has collected every job."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        cfg = validate(OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"]))
        out = Path(cfg.out)
        pairs = [(a, b) for a, b in cfg.comparisons]
        print(compare([out], cfg.judge, out, cfg.baseline, pairs))  # every model x arm x seed the jobs scored
        print(f"\nIn {out}/: comparison.csv, comparison_by_seed.csv, comparison.png")
        if any(run.model == cfg.model.name for run in scored([out], cfg.judge)):  # a sweep over models may not hold it
            print(f"\n{report(cfg)}\n\nIn {out}/: results.csv, results.md, rates.png")
