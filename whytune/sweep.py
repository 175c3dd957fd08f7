"""Hydra callback: the last job of a sweep to finish reports the run folder that all its jobs filled.

The submitting process need not live that long. Before any job is queued it writes a manifest into the sweep
folder, `<out>/hydra/sweep-<time>/sweep.json`: how many jobs the sweep has. Hydra hands this callback, as it
stands then, to every job (pickled with the launcher), so each job knows the manifest and the sweep's config.
A job that completes adds its number to the manifest under a lock on the sweep folder; the one that completes
the set writes the report, once, and keeps what it printed in `report.txt` beside the manifest. The submitter,
if still alive when the launcher returns, prints that, or reports itself where no job did (a report that raised).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from whytune.config import validate
from whytune.eval.aggregate import compare, scored
from whytune.runner import report
from whytune.runs import locked, now, write_json, write_text

MANIFEST = "sweep.json"  # in the sweep folder: {"jobs": N, "finished": [job numbers], "reported": time or null}
REPORT = "report.txt"  # beside it: what the report printed


class ReportAfterSweep(Callback):
    """on_multirun_start in the submitter, on_job_end in each job's process (a Slurm job, or the submitter itself
    with Hydra's basic launcher), on_multirun_end in the submitter once the launcher has collected every job."""

    def __init__(self) -> None:
        self.sweep: Path | None = None  # the sweep folder, where the manifest is; None: no manifest kept
        self.config: DictConfig | None = None  # the sweep's config, without its hydra section

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.config = without_hydra(config)
        jobs = job_count(config)
        if jobs is not None:  # None: a sweeper other than Hydra's basic one; the submitter reports
            self.sweep = Path(str(config.hydra.sweep.dir)).absolute()  # the jobs may start elsewhere
            write_json(self.sweep / MANIFEST, {"jobs": jobs, "finished": [], "reported": None})

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.sweep is None or self.config is None or job_return.status is not JobStatus.COMPLETED:
            return  # not a job of a sweep, or a failed one: the sweep is reported once a rerun has completed it
        with locked(self.sweep):  # two jobs finishing at once take turns: only one of them sees the set complete
            manifest = json.loads((self.sweep / MANIFEST).read_text())
            manifest["finished"] = sorted({*manifest["finished"], int(config.hydra.job.num)})
            write_json(self.sweep / MANIFEST, manifest)
            if len(manifest["finished"]) < manifest["jobs"] or manifest["reported"]:
                return
            # An error here is Hydra's warning in this job's log; the submitter, if alive, tries again.
            write_text(self.sweep / REPORT, sweep_report(self.config) + "\n")
            write_json(self.sweep / MANIFEST, {**manifest, "reported": now()})
        print(f"[sweep] the last of {manifest['jobs']} jobs to finish wrote the report: {self.sweep / REPORT}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is not None and json.loads((self.sweep / MANIFEST).read_text())["reported"]:
            print((self.sweep / REPORT).read_text())
        else:  # no manifest kept, or the last job's report raised
            print(sweep_report(without_hydra(config)))


def without_hydra(config: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"])


def job_count(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the sweep's overrides (and hydra.sweeper.params), as it does;
    None for another sweeper, whose jobs are not known up front."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, max_batch_size=None))


def sweep_report(config: DictConfig) -> str:
    """The comparison over every model x arm x seed in the run folder, and the report of the config's model where
    the jobs scored it (a sweep over models may not hold it); returns what to print."""
    cfg = validate(config)
    if not cfg.eval.score:
        return "sampled, not judged (eval.score=false): judge and report with eval.score=true"
    out = Path(cfg.out)
    pairs = [(a, b) for a, b in cfg.comparisons]
    text = compare([out], cfg.judge, out, cfg.baseline, pairs)
    text += f"\n\nIn {out}/: comparison.csv, comparison_by_seed.csv, comparison.png"
    if any(run.model == cfg.model.name for run in scored([out], cfg.judge)):
        text += f"\n\n{report(cfg)}\n\nIn {out}/: results.csv, results.md, rates.png"
    return text
