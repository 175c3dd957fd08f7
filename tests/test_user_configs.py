"""A user's own config folder, joined through hydra.searchpath: a new arm and a new comparison are YAML only."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.conftest import run_python

ARM = """\
# An arm of the user's: the bare-rule writer under another name.
brief_rules:
  description: SFT on the demonstrations preceded by a bare rule
  writer: rules
"""
EXPERIMENT = """\
# @package _global_
# The smoke experiment with the user's arm, and a comparison of the user's (the reverse of the baseline test).
defaults:
  - smoke
  - override /arms: [baseline, brief_rules]

name: mine
comparisons: [[baseline, brief_rules]]
"""


def test_an_arm_and_a_comparison_added_in_yaml_alone(tmp_path, cache_dir):
    mine = tmp_path / "my_configs"
    (mine / "arms").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "arms" / "brief_rules.yaml").write_text(ARM)
    (mine / "experiment" / "mine.yaml").write_text(EXPERIMENT)
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    settings = [f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}", "eval.samples=2", "eval.batch_size=2"]
    done = run_python(
        "-m",
        "whytune.ablate",
        f"hydra.searchpath=[file://{mine}]",
        "experiment=mine",
        *settings,
        "eval.forced_choice=false",
        "wandb.mode=disabled",
        cwd=elsewhere,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    with open(run / "results.csv") as handle:
        assert [row["arm"] for row in csv.DictReader(handle)] == ["baseline", "brief_rules"]
    with open(run / "comparisons.csv") as handle:
        pairs = [(row["arm_a"], row["arm_b"]) for row in csv.DictReader(handle)]
    assert sorted(pairs) == [("baseline", "brief_rules"), ("brief_rules", "baseline")]
    card = (run / "data" / "brief_rules" / "README.md").read_text()
    assert "bare rule" in card and Path(run / "tiny-random" / "brief_rules" / "seed0" / "adapter").exists()
