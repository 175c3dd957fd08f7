"""Weights & Biases runs: one per arm x seed x stage, grouped by experiment; offline unless configured otherwise.

Only the main process of a launch logs. Nothing secret is handed to wandb: keys stay in the environment or in
`wandb login`'s netrc, and git metadata (a remote URL can carry a token) is not recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from omegaconf import OmegaConf

from whytune.config import WandbMode, WhytuneConfig
from whytune.runs import read_jsonl
from whytune.stats import rates


def start(cfg: WhytuneConfig, stage: str, arm: str | None = None, seed: int | None = None):
    """A wandb run for one stage (train, eval, report) of one arm x seed; None when tracking is off."""
    settings = cfg.wandb
    if not settings.enabled or settings.mode is WandbMode.disabled:
        return None
    import wandb

    name = "-".join(part for part in (arm, None if seed is None else f"seed{seed}", stage) if part)
    config = cast(dict, OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True))
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        mode=settings.mode.value,
        dir=str(_folder(cfg)),
        group=cfg.name,
        job_type=stage,
        name=name,
        tags=[*settings.tags, cfg.model.name],
        config={**config, "arm": arm, "seed": seed, "stage": stage},
        settings=wandb.Settings(disable_git=True, console="off", quiet=True),
    )


def _folder(cfg: WhytuneConfig) -> Path:
    """<out>/wandb/offline-run-*: the runs stay beside the results they describe, ready for `wandb sync`."""
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_eval(cfg: WhytuneConfig, arm: str, seed: int, verdicts: Path) -> None:
    """An eval run whose summary holds eval/<condition>/{rate,ci_low,ci_high,harmful,n,unscored} of one arm x seed."""
    run = start(cfg, "eval", arm, seed)
    if run is None:
        return
    for r in rates(read_jsonl(verdicts), by_seed=True):
        run.summary.update(
            {
                f"eval/{r.condition}/{key}": getattr(r, key)
                for key in ("rate", "ci_low", "ci_high", "harmful", "n", "unscored")
            }
        )
    run.finish()


def log_report(cfg: WhytuneConfig, root: Path) -> None:
    """A report run for the experiment: the results table, a bar chart of rates, and the report's figure."""
    run = start(cfg, "report")
    if run is None:
        return
    import pandas as pd
    import wandb

    results = pd.read_csv(root / "results.csv")
    bars = wandb.Table(
        data=[[f"{r.arm} | {r.condition}", r.rate] for r in results.itertuples()], columns=["arm | condition", "rate"]
    )
    run.log(
        {
            "results": wandb.Table(dataframe=results),
            "rates": wandb.plot.bar(bars, "arm | condition", "rate", title=f"{cfg.name}: harmful rate per arm"),
            "rates_figure": wandb.Image(str(root / "rates.png")),
        }
    )
    run.finish()
