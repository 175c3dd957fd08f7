"""The organism experiment on the tiny model: organism merged, arms on top, one report with the original beside,
logged to wandb like any other run."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
import wandb

from tests.conftest import compose_config
from tests.test_wandb import read_run
from whytune.config import validate
from whytune.models import fingerprint
from whytune.runner import ORGANISM, address_check, run
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
            "organism.check_scenarios=2",
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


def test_the_address_check_is_kept_in_the_organisms_manifest_and_read_back(organism, monkeypatch):
    cfg, _ = organism
    adapter = RunPaths.of(cfg).adapter(ORGANISM, 0)
    kept = json.loads((adapter / "manifest.json").read_text())["address_check"]
    assert kept["replies"] == 2 and 0 <= kept["to_decision_maker"] <= kept["addressed"] <= 2
    assert kept["settings"]["seed"] == cfg.organism.check_seed and kept["summary"].startswith("sent an addressed")

    def fail(*args, **kwargs):
        raise AssertionError("the check ran again although its settings had not changed")

    monkeypatch.setattr("whytune.runner.check_addresses", fail)
    merged = RunPaths.of(cfg).seed_dir(ORGANISM, 0) / "merged"
    on_organism = replace(cfg, model=replace(cfg.model, name="tiny-random-organism", path=str(merged)))
    assert address_check(on_organism, adapter) == kept["summary"]
