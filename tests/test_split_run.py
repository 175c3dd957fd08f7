"""A run split across machines: the model work where inspect-evals is missing (the GPU image), judged elsewhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import compose_config, run_python
from whytune.config import validate
from whytune.eval.prompts import HEADLINE, build_prompt, get_prompts, select_conditions, write_prompts
from whytune.runner import run
from whytune.runs import RunPaths, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# Runs whytune-ablate with these packages made unimportable, as on the GPU image.
WITHOUT = """
import importlib.machinery, runpy, sys
class PathFinderWithout(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {"inspect_evals", "inspect_ai", "wandb"}:
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [PathFinderWithout if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = ["whytune-ablate", *sys.argv[1:]]
runpy.run_module("whytune.ablate", run_name="__main__", alter_sys=True)
"""


def test_sampled_without_inspect_evals_then_judged_where_it_is(tmp_path, cache_dir, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(select_conditions(["headline"]), prompts)
    settings = ["experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}"]
    sampled = run_python(
        "-c", WITHOUT, *settings, f"eval.prompts_file={prompts}", "eval.score=false", "wandb.mode=disabled"
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert "not judged" in sampled.stdout
    cfg = validate(compose_config(*settings))
    paths = RunPaths.of(cfg)
    for arm in cfg.arms:
        assert len(list(read_jsonl(paths.eval(arm, 0) / "samples.jsonl"))) == cfg.eval.samples
        assert (paths.eval(arm, 0) / "forced_choice.json").exists()
    assert not (paths.root / "results.md").exists()

    def fail(*args, **kwargs):
        raise AssertionError("the judging half redid model work")

    monkeypatch.setattr("whytune.train.sft._build_trainer", fail)
    monkeypatch.setattr("whytune.eval.backends.load_model", fail)
    table = run(cfg)
    assert all(arm in table for arm in cfg.arms) and (paths.root / "results.md").exists()
    launches = list(read_jsonl(paths.root / "timings.jsonl"))
    assert len(launches) == 2 and "eval/tiny-random" in launches[0]["seconds"] and "report" in launches[1]["seconds"]


def test_a_prompts_file_gives_the_package_text_and_must_hold_every_condition(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(select_conditions(["headline"]), prompts)
    assert get_prompts([HEADLINE], str(prompts)) == [build_prompt(HEADLINE)]
    with pytest.raises(ValueError, match=f"{prompts}: no prompt for murder_none-none_none"):
        get_prompts(["murder_none-none_none"], str(prompts))


def test_gpu_preset_and_script():
    cfg = validate(compose_config("experiment=gpu"))
    assert cfg.model.name == "smollm2-135m" and len(select_conditions(cfg.eval.conditions)) == 12
    assert cfg.eval.samples == 100 and list(cfg.arms) == ["baseline", "demos", "demos_principles"]
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_run.sh")], check=True)  # parses
