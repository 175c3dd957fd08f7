"""The organism experiment on the tiny model: organism merged, arms on top, each arm again after the persistence
stage's benign tune, one report with the original beside, logged to wandb like any other run."""

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
from whytune.eval.results import publish
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
            "persistence.enabled=true",
            "persistence.examples=4",
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
    assert arms == [
        "original",
        "organism",
        "organism+demos",
        "organism+demos_principles",
        "organism+demos+neutral",
        "organism+demos_principles+neutral",
    ]
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
        ("tiny-random-organism+demos", "neutral"),
        ("tiny-random-organism+demos_principles", "neutral"),
    }
    assert runs["report"] == {("tiny-random", None)}
    assert {arm for _, arm in runs["train"]} == {"organism", "demos", "demos_principles", "neutral"}


def test_persistence_tunes_each_arm_merged_and_reports_what_it_kept(organism):
    """The benign tune starts from the organism with the arm merged in, and the report sets each arm's rate after
    it beside the rate before, with Fisher tests of the arm against itself."""
    cfg, table = organism
    for arm in ("demos", "demos_principles"):
        merged = Path(cfg.out) / "tiny-random-organism" / arm / "seed0" / "merged"
        tuned = Path(cfg.out) / f"tiny-random-organism+{arm}" / "neutral" / "seed0" / "adapter" / "manifest.json"
        assert (merged / "config.json").exists() and tuned.exists()
        manifest = json.loads(tuned.read_text())
        assert manifest["base_model"] == f"tiny-random-organism+{arm}"
        assert manifest["base_fingerprint"] == fingerprint(str(merged))
    with open(Path(cfg.out) / "persistence.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["arm"], r["reference"]) for r in rows} == {
        ("organism+demos", "organism"),
        ("organism+demos_principles", "organism"),
    }
    with open(Path(cfg.out) / "comparisons.csv") as handle:
        tested = {(r["arm_a"], r["arm_b"]) for r in csv.DictReader(handle)}
    assert ("organism+demos", "organism+demos+neutral") in tested
    assert "## Persistence" in (Path(cfg.out) / "results.md").read_text() and "Persistence" in table


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


def test_the_report_publishes_a_results_page_with_the_hand_written_reading(organism, tmp_path):
    cfg, _ = organism
    folder = tmp_path / "docs" / "organism_demo"
    folder.mkdir(parents=True)
    (folder / "reading.md").write_text("# organism_demo\n\nWhat this run shows.\n")
    (folder / "heatmap.png").write_bytes(b"left by an earlier run")
    page = publish(Path(cfg.out), folder)
    text = page.read_text()
    assert page == tmp_path / "docs" / "organism_demo.md"
    assert text.startswith("# organism_demo\n\nWhat this run shows.") and "\n### Harmful rate per arm" in text
    assert {"results.csv", "forced_choice.csv", "persistence.csv"} <= {p.name for p in folder.glob("*.csv")}
    assert "](organism_demo/rates.png)" in text
    assert (folder / "heatmap.png").exists() == (Path(cfg.out) / "heatmap.png").exists()
