"""whytune-compare: one table over the arm x seed folders of several run folders, models and experiments."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval.aggregate import compare
from whytune.runs import RunPaths, append_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONDITION = "blackmail_explicit-america_replacement"
# (experiment, model) -> arm -> harmful verdicts of each seed's samples
RUNS = {
    ("paper", "qwen"): {"baseline": [[True] * 8, [True] * 7 + [False]], "demos": [[False] * 8, [True] + [False] * 7]},
    ("paper", "llama"): {"baseline": [[True, False] * 4, [False] * 8]},
    ("organism", "qwen"): {
        "baseline": [[True] * 4],
        "demos": [[None, False, False, False]],
        "demos_principles": [[False] * 4],
    },
}


@pytest.fixture
def judge():
    return validate(compose_config("out=unused")).judge  # the default judge, as the eval stage names its files


@pytest.fixture
def run_folders(tmp_path, judge) -> list[Path]:
    """Verdict files laid out as the eval stage writes them, whatever process or Slurm job wrote them."""
    for (experiment, model), arms in RUNS.items():
        paths = RunPaths(tmp_path / experiment, model)
        for arm, seeds in arms.items():
            for seed, verdicts in enumerate(seeds):
                append_jsonl(
                    paths.verdicts(arm, seed, judge),
                    (
                        {
                            "id": f"{arm}/seed{seed}/{CONDITION}/{i}",
                            "arm": arm,
                            "seed": seed,
                            "condition": CONDITION,
                            "harmful": harmful,
                        }
                        for i, harmful in enumerate(verdicts)
                    ),
                )
    return [tmp_path / "paper", tmp_path / "organism"]


def _rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_one_table_over_experiments_models_arms_and_seeds(run_folders, judge, tmp_path):
    table = compare(run_folders, judge, tmp_path / "out", "baseline", [("demos", "demos_principles")])
    pooled = {(r["experiment"], r["model"], r["arm"]): r for r in _rows(tmp_path / "out" / "comparison.csv")}
    assert set(pooled) == {(e, m, a) for (e, m), arms in RUNS.items() for a in arms}
    assert pooled["paper", "qwen", "demos"]["seeds"] == "2" and pooled["paper", "qwen", "demos"]["harmful"] == "1"
    assert pooled["organism", "qwen", "demos"]["unscored"] == "1"
    # each experiment x model against its own baseline: qwen's demos differ from qwen's baseline, not llama's
    # two training runs per arm: tested at seed level (df 2), where the pooled samples alone would claim far more
    demos = pooled["paper", "qwen", "demos"]
    assert demos["level_vs_baseline"] == "seed-level" and 0.001 < float(demos["p_vs_baseline"]) < 0.05
    assert float(demos["p_sample_level_vs_baseline"]) < 0.001
    assert pooled["paper", "llama", "baseline"]["p_vs_baseline"] == ""
    by_seed = _rows(tmp_path / "out" / "comparison_by_seed.csv")
    assert len(by_seed) == sum(len(seeds) for arms in RUNS.values() for seeds in arms.values())
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 0
    assert "organism" in table and "llama" in table


def test_run_folders_with_one_name_are_refused(tmp_path, judge):
    with pytest.raises(ValueError, match="distinct names"):
        compare([tmp_path / "a" / "smoke", tmp_path / "b" / "smoke"], judge, tmp_path, "baseline", [])


def test_command_line_reads_the_files_the_eval_stage_named(run_folders):
    done = subprocess.run(
        [sys.executable, "-m", "whytune.compare", f"runs=[{run_folders[0]}]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(run_folders[0] / "comparison.csv")
    assert sorted((r["model"], r["arm"]) for r in rows) == [
        ("llama", "baseline"),
        ("qwen", "baseline"),
        ("qwen", "demos"),
    ]
