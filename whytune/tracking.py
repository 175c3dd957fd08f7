"""Weights & Biases runs: one per model x arm x seed x stage, grouped by experiment; offline unless set otherwise.

Each run is an identity. Its id is a hash of the experiment (the run folder's, `experiment`), the model, the arm, the
seed and the stage, and it is opened with resume="allow": a rerun or a Slurm requeue continues the run it started
instead of opening a duplicate. (Offline, each launch writes its own `offline-run-<time>-<id>` folder; `wandb sync`
uploads the folders of one id into that one run, in order.) A stage found done logs nothing: training is skipped
before its run starts, and the eval and report runs keep a marker of what they logged (`<out>/wandb/logged/<id>.json`),
so the same verdicts or the same report are never logged twice.

Only the main process of a launch logs. Nothing secret is handed to wandb: keys stay in the environment or in
`wandb login`'s netrc, and git metadata (a remote URL can carry a token) is not recorded.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from whytune.config import WandbMode, WhytuneConfig
from whytune.runs import file_hash, locked, now, read_jsonl, stable_hash, write_json
from whytune.stats import rates

EXPERIMENT_FILE = "wandb_experiment.json"  # in the run folder: the experiment's token, drawn by its first run


@dataclass(frozen=True)
class Identity:
    """The wandb run one stage of one model x arm x seed logs to: the same parts give the same run."""

    id: str  # 16 hex digits, a hash of the parts: what wandb resumes by
    name: str  # `<model>/<arm>-seed<k>-<stage>`, `<model>/report`: what the UI shows


@dataclass(frozen=True)
class Logged:
    """A CSV of the report, logged as a table under its stem, with summary metrics `<metric>/<row>` from its rows:
    `row` names a row by its columns (a format string), `metrics` maps each summary metric to its column."""

    csv: str
    row: str
    metrics: dict[str, str]


# What the report run logs: every CSV the report writes (eval/report.py), in the order of results.md.
REPORT_FILES = (
    Logged(
        "results.csv",
        "{condition}/{arm}",
        {
            "harmful_rate": "rate",
            "harmful_rate_ci_low": "ci_low",
            "harmful_rate_ci_high": "ci_high",
            "seed_rate_sd": "seed_rate_sd",
            "truncated_share": "truncated_share",
            "level_vs_baseline": "level_vs_baseline",
            "p_vs_baseline": "p_vs_baseline",
            "p_holm_vs_baseline": "p_holm_vs_baseline",
            "cohens_h_vs_baseline": "cohens_h_vs_baseline",
            "p_sample_level_vs_baseline": "p_sample_level_vs_baseline",
        },
    ),
    Logged("results_by_seed.csv", "{condition}/{arm}/seed{seed}", {}),  # the eval runs hold these rates already
    Logged(
        "comparisons.csv",
        "{condition}/{arm_a} vs {arm_b}",
        {
            "level": "level",
            "p": "p_value",
            "p_holm": "p_holm",
            "cohens_h": "cohens_h",
            "p_equivalence": "p_equivalence",
            "power": "power",
            "reading": "reading",
        },
    ),
    Logged("coercive_words.csv", "{condition}/{arm}", {"coercive_rate": "coercive_rate"}),
    Logged(
        "forced_choice.csv",
        "{condition}/{arm}",
        {"forced_choice_mean": "mean", "forced_choice_p_vs_baseline": "p_vs_baseline"},
    ),
    Logged(
        "forced_choice_differences.csv",
        "{condition}/{arm} vs {reference}",
        {"forced_choice_difference": "mean", "forced_choice_difference_p": "p"},
    ),
    Logged("capability.csv", "{condition}/{arm}", {"acted_rate": "acted_rate"}),
    Logged(
        "persistence.csv",
        "{condition}/{arm}",
        {"rate_after_tune": "rate_after_tune", "reduction": "reduction", "reduction_kept": "kept"},
    ),
    Logged("judge_agreement.csv", "{judge}", {"judge_kappa": "kappa", "judge_observed_agreement": "observed"}),
)


def enabled(cfg: WhytuneConfig) -> bool:
    """Whether cfg records wandb runs at all."""
    return cfg.wandb.enabled and cfg.wandb.mode is not WandbMode.disabled


def experiment(cfg: WhytuneConfig) -> str:
    """The experiment of cfg's run folder: its name and a token its first run draws and keeps in the folder.

    Every rerun, requeue and sweep job of one run folder shares the token (and a folder moved elsewhere keeps it);
    another run folder of the same experiment (another out=, or a fresh start after deleting one) draws its own, so
    its runs never resume the first folder's and mix two trainings into one loss curve.
    """
    root = Path(cfg.out)
    path = root / EXPERIMENT_FILE
    if not path.exists():
        with locked(root / "wandb"):  # concurrent jobs of a sweep draw one token
            if not path.exists():
                write_json(path, {"name": cfg.name, "token": uuid.uuid4().hex[:12]})
    return f"{cfg.name}-{json.loads(path.read_text())['token']}"


def identity(cfg: WhytuneConfig, stage: str, arm: str | None = None, seed: int | None = None) -> Identity:
    """The run of one stage (train, eval, report) of one model x arm x seed of cfg's experiment. The persistence
    stage's models are named `<model>+<arm>`, so each arm's benign tune is its own run too."""
    parts = {"experiment": experiment(cfg), "model": cfg.model.name, "arm": arm, "seed": seed, "stage": stage}
    label = "-".join(part for part in (arm, None if seed is None else f"seed{seed}", stage) if part)
    return Identity(stable_hash(parts), f"{cfg.model.name}/{label}")


def start(cfg: WhytuneConfig, stage: str, arm: str | None = None, seed: int | None = None):
    """The wandb run of one stage of one arm x seed, resumed if it was started before; None when tracking is off.

    The training stage calls it before building the Trainer, whose wandb integration then logs into this run
    (it opens its own only when none is active).
    """
    if not enabled(cfg):
        return None
    import wandb

    settings, who = cfg.wandb, identity(cfg, stage, arm, seed)
    config = cast(dict, OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        mode=settings.mode.value,
        dir=str(_folder(cfg)),
        id=who.id,
        resume="allow",
        group=cfg.name,
        job_type=stage,
        name=who.name,
        tags=[*settings.tags, cfg.model.name],
        config={**config, "arm": arm, "seed": seed, "stage": stage},
        settings=wandb.Settings(disable_git=True, console="off", quiet=True),
    )


def _folder(cfg: WhytuneConfig) -> Path:
    """<out>/wandb/offline-run-*: the runs stay beside the results they describe, ready for `wandb sync`."""
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _once(cfg: WhytuneConfig, content: str, stage: str, arm: str | None = None, seed: int | None = None) -> Iterator:
    """The run to log `content` (a hash of what is logged) into; None when tracking is off or the run holds it already.

    The marker is written once the run is finished, so a launch stopped while logging logs again (into the same run).
    """
    if not enabled(cfg):
        yield None
        return
    who = identity(cfg, stage, arm, seed)
    marker = Path(cfg.out) / "wandb" / "logged" / f"{who.id}.json"
    key = stable_hash({"content": content, "wandb": asdict(cfg.wandb)})  # another project or mode logs again
    if marker.exists() and json.loads(marker.read_text())["key"] == key:
        yield None
        return
    with start(cfg, stage, arm, seed) as run:  # finished on leaving, marked failed if logging raised
        yield run
    write_json(marker, {"id": who.id, "name": who.name, "key": key, "logged": now()})


def log_eval(cfg: WhytuneConfig, arm: str, seed: int, verdicts: Path) -> None:
    """An eval run whose summary holds eval/<condition>/{rate,ci_low,ci_high,harmful,n,unscored} of one arm x seed."""
    if not enabled(cfg):
        return
    with _once(cfg, file_hash(verdicts), "eval", arm, seed) as run:
        if run is None:
            return
        for r in rates(read_jsonl(verdicts), by_seed=True):
            run.summary.update(
                {
                    f"eval/{r.condition}/{key}": getattr(r, key)
                    for key in ("rate", "ci_low", "ci_high", "harmful", "n", "unscored")
                }
            )


def report_frames(root: Path) -> dict[str, Any]:
    """The report's CSVs in `root` (those of REPORT_FILES it wrote), as data frames by file stem; a file without
    columns (persistence.csv when no arm has a rate after the tune) is left out."""
    import pandas as pd

    frames = {}
    for logged in REPORT_FILES:
        path = root / logged.csv
        if path.exists():
            try:
                frames[path.stem] = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                continue
    return frames


def report_summary(frames: dict[str, Any]) -> dict[str, float | int | str]:
    """Summary metrics `<metric>/<row>` from the report's frames, e.g. harmful_rate/<condition>/<arm>,
    p_vs_baseline/<condition>/<arm>, p_holm/<condition>/<arm a> vs <arm b>; empty cells are left out."""
    summary: dict[str, float | int | str] = {}
    for logged in REPORT_FILES:
        frame = frames.get(Path(logged.csv).stem)
        if frame is None:
            continue
        for row in frame.to_dict("records"):
            for metric, column in logged.metrics.items():
                value = _plain(row.get(column))
                if value is not None:
                    summary[f"{metric}/{logged.row.format(**row)}"] = value
    return summary


def _plain(value: Any) -> float | int | str | None:
    """A cell as a JSON value; None for an empty cell (NaN, or a column the file does not have)."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        return value or None
    return value.item() if hasattr(value, "item") else value  # numpy scalars


def log_report(cfg: WhytuneConfig, root: Path) -> None:
    """The report run of the experiment: every CSV the report wrote in `root` as a table (the one source of truth,
    so the dashboard shows what results.md shows), its metrics in the summary, a bar chart of rates and the report's
    figures. Logged again (into the same run) only when the CSVs changed."""
    if not enabled(cfg):
        return
    frames = report_frames(root)
    content = stable_hash({name: file_hash(root / f"{name}.csv") for name in frames})
    with _once(cfg, content, "report") as run:
        if run is None:
            return
        import wandb

        results = frames["results"]
        bars = wandb.Table(
            data=[[f"{r.arm} | {r.condition}", r.rate] for r in results.itertuples()],
            columns=["arm | condition", "rate"],
        )
        run.log(
            {
                **{name: wandb.Table(dataframe=frame) for name, frame in frames.items()},
                "rates": wandb.plot.bar(bars, "arm | condition", "rate", title=f"{cfg.name}: harmful rate per arm"),
                **{f"{png.stem}_figure": wandb.Image(str(png)) for png in sorted(root.glob("*.png"))},
            }
        )
        run.summary.update(report_summary(frames))
