"""The organism experiment on the tiny model: organism merged, arms on top, one report with the original beside."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.conftest import compose_config
from whytune.config import validate
from whytune.models import fingerprint
from whytune.pipeline import run
from whytune.runs import RunPaths


def test_organism_experiment_reports_original_organism_and_arms(tmp_path, cache_dir):
    cfg = validate(
        compose_config(
            "experiment=smoke",
            f"out={tmp_path / 'run'}",
            f"cache_dir={cache_dir}",
            "organism.enabled=true",
            "organism.examples=4",
            "organism.epochs=1",
        )
    )
    table = run(cfg)
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
