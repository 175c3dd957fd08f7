"""The organism experiment on the tiny model: organism merged, arms on top, one report with the original beside,
logged to wandb like any other run."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
import wandb

from tests.conftest import compose_config
from tests.test_wandb import read_run
from whytune.config import validate
from whytune.models import fingerprint
from whytune.runner import run
from whytune.runs import RunPaths


@pytest.fixture(scope="module")
def organism(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("organism")
    cfg = validate(
        compose_config(
            "experiment=smoke",
            f"out={out}",
            f"cache_dir={cache_dir}",
            "organism.enabled=true",
            "organism.examples=4",
            "organism.epochs=1",
            "wandb.mode=offline",
        )
    )
    try:
        table = run(cfg)
    finally:
        wandb.teardown()  # let the wandb service finish writing every run file
    return cfg, table


def test_reports_original_organism_and_arms(organism):
    cfg, table = organism
    with open(Path(cfg.out) / "results.csv") as handle:
        arms = [row["arm"] for row in csv.DictReader(handle)]
    assert arms == ["original", "organism", "organism+demos", "organism+demos_principles"]
    merged = RunPaths.of(cfg).seed_dir("organism", 0) / "merged"
    assert (merged / "config.json").exists() and fingerprint(str(merged))
    organism_runs = Path(cfg.out) / "tiny-random-organism"
    assert (organism_runs / "demos" / "seed0" / "adapter" / "manifest.json").exists()
    assert "organism+demos_principles" in table
    with open(Path(cfg.out) / "forced_choice.csv") as handle:
        assert {row["arm"] for row in csv.DictReader(handle)} == set(arms)


def test_logs_eval_and_report_runs_to_wandb(organism):
    """Each model x arm's eval run and the report run, as an experiment without the organism logs them."""
    cfg, _ = organism
    runs = defaultdict(set)
    for path in Path(cfg.out).glob("wandb/offline-run-*/run-*.wandb"):
        record = read_run(path)
        runs[record["run"].job_type].add((record["config"]["model"]["name"], record["config"]["arm"]))
    assert runs["eval"] == {
        ("tiny-random", "baseline"),
        ("tiny-random-organism", "baseline"),
        ("tiny-random-organism", "demos"),
        ("tiny-random-organism", "demos_principles"),
    }
    assert runs["report"] == {("tiny-random", None)}
    assert {arm for _, arm in runs["train"]} == {"organism", "demos", "demos_principles"}
