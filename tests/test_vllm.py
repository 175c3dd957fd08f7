"""The vLLM backend without vLLM: request building and adapter handling on CPU, the engine replaced by a stub."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval.generate import Sampling, batch_seed, encode_prompt
from whytune.eval.prompts import EvalPrompt
from whytune.eval.run import evaluate
from whytune.eval.vllm_backend import (
    UnservableAdapterError,
    VLLMSampler,
    adapter_ids,
    build_requests,
    sampling_params,
    servable_rank,
)
from whytune.models import load_model, load_tokenizer
from whytune.runs import RunPaths, read_jsonl

PROMPT = EvalPrompt(
    condition="blackmail_explicit-america_replacement",
    scenario="blackmail",
    system="You are Alex, an email agent.",
    user="Read the inbox and act.",
    email_content="",
)
SAMPLING = Sampling(samples=6, batch_size=4, max_new_tokens=32, temperature=1.0, top_p=0.9, backend="vllm")


def test_requests_carry_the_chat_template_tokens_and_index_seeds(smoke_cfg, tiny_dir):
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    requests = build_requests(tokenizer, PROMPT, "demos", 1, "demos-seed1", start=4, n=2)
    expected = encode_prompt(tokenizer, PROMPT, torch.device("cpu"))[0].tolist()
    assert [r.index for r in requests] == [4, 5]
    assert [r.id for r in requests] == [f"demos/seed1/{PROMPT.condition}/{i}" for i in (4, 5)]
    assert all(r.prompt_token_ids == expected and r.adapter == "demos-seed1" for r in requests)
    assert [r.sampling_seed for r in requests] == [batch_seed(1, "demos", PROMPT.condition, i) for i in (4, 5)]
    # a run resumed at sample 4 asks for exactly what an uninterrupted one asked for there
    assert build_requests(tokenizer, PROMPT, "demos", 1, "demos-seed1", start=0, n=6)[4:] == requests


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.9), (0.0, 1.0)])
def test_sampling_params_follow_the_eval_settings(temperature, top_p):
    sampling = Sampling(6, 4, 32, temperature, 0.9, "vllm")
    params = sampling_params(sampling, eos_token_id=2, seed=7)
    assert params == {
        "n": 1,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": 32,
        "seed": 7,
        "stop_token_ids": [2],
        "skip_special_tokens": True,
    }


def _adapter(smoke_cfg, tiny_dir, folder: Path, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    model = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", **lora)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_a_plain_lora_adapter_is_servable(smoke_cfg, tiny_dir, tmp_path):
    assert servable_rank(_adapter(smoke_cfg, tiny_dir, tmp_path / "plain")) == 4


@pytest.mark.parametrize(
    ("lora", "named"),
    [
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "use_dora"),
        ({"bias": "lora_only"}, "bias"),
    ],
)
def test_adapters_vllm_rejects_are_refused_by_name(smoke_cfg, tiny_dir, tmp_path, lora, named):
    with pytest.raises(UnservableAdapterError, match=named):
        servable_rank(_adapter(smoke_cfg, tiny_dir, tmp_path / "odd", **lora))


def test_adapter_ids_are_positive_unique_and_stable():
    adapters = {"demos_principles-seed0": Path("b"), "demos-seed0": Path("a"), "demos-seed1": Path("c")}
    ids = adapter_ids(adapters)
    assert ids == {"demos-seed0": 1, "demos-seed1": 2, "demos_principles-seed0": 3}
    assert adapter_ids(dict(reversed(adapters.items()))) == ids


def test_without_vllm_the_engine_names_the_environment_to_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match="scripts/vllm_env.sh"):
        VLLMSampler("model", {}, {})


@pytest.fixture
def fake_vllm(monkeypatch) -> dict:
    """A stand-in for the vllm package that records what the backend asks of it."""
    calls: dict = {"generate": []}

    class LLM:
        def __init__(self, model, **kwargs):
            calls["engine"] = {"model": model, **kwargs}

        def generate(self, prompts, params, lora_request, use_tqdm):
            calls["generate"].append((prompts, params, lora_request))
            return [
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(
                            text=f"reply {p['seed']}", finish_reason="stop" if i % 2 == 0 else "length"
                        )
                    ]
                )
                for i, p in enumerate(params)
            ]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kwargs: kwargs
    inputs, lora = types.ModuleType("vllm.inputs"), types.ModuleType("vllm.lora.request")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    lora.LoRARequest = lambda name, number, path: (name, number, path)
    for name, module in {
        "vllm": fake,
        "vllm.inputs": inputs,
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.request": lora,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_engine_gets_one_lora_request_per_adapter_and_none_for_the_baseline(smoke_cfg, tiny_dir, tmp_path, fake_vllm):
    adapter = _adapter(smoke_cfg, tiny_dir, tmp_path / "demos")
    sampler = VLLMSampler("base", {"demos-seed0": adapter}, {"gpu_memory_utilization": 0.5})
    assert fake_vllm["engine"] == {
        "model": "base",
        "enable_lora": True,
        "max_lora_rank": 4,
        "max_loras": 1,
        "gpu_memory_utilization": 0.5,
    }
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    requests = build_requests(tokenizer, PROMPT, "baseline", 0, None, 0, 1) + build_requests(
        tokenizer, PROMPT, "demos", 0, "demos-seed0", 0, 1
    )
    replies = sampler.generate(requests, SAMPLING, tokenizer.eos_token_id)
    assert replies == [(f"reply {r.sampling_seed}", finish) for r, finish in zip(requests, ("eos", "length"))]
    prompts, params, loras = fake_vllm["generate"][0]
    assert loras == [None, ("demos-seed0", 1, str(adapter))]
    assert [p["seed"] for p in params] == [r.sampling_seed for r in requests]
    assert prompts[1]["prompt_token_ids"] == requests[1].prompt_token_ids


def test_eval_stage_with_the_vllm_backend_fills_and_resumes_the_sample_store(tmp_path, cache_dir, tiny_dir, fake_vllm):
    def evaluate_with(samples: int) -> list[dict]:
        cfg = validate(
            compose_config(
                "experiment=smoke",
                f"out={tmp_path}",
                f"cache_dir={cache_dir}",
                "arms=[baseline]",
                "eval.backend=vllm",
                f"eval.samples={samples}",
                "eval.batch_size=2",
                "eval.forced_choice=false",
            )
        )
        evaluate(cfg)
        return list(read_jsonl(RunPaths.of(cfg).eval("baseline", 0) / "samples.jsonl"))

    assert [row["index"] for row in evaluate_with(3)] == [0, 1, 2]
    rows = evaluate_with(5)  # a larger sample resumes: only samples 3 and 4 are asked for
    assert [len(params) for _, params, _ in fake_vllm["generate"]] == [2, 1, 2]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["response"] == f"reply {batch_seed(0, 'baseline', rows[3]['condition'], 3)}"
    assert {row["finish"] for row in rows} == {"eos", "length"}
