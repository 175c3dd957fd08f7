"""The vLLM backend without vLLM: request building and adapter handling on CPU, the engine replaced by a stub."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval.generate import Sampling, batch_seed, encode_prompt
from whytune.eval.prompts import EvalPrompt, read_prompts
from whytune.eval.run import evaluate
from whytune.eval.vllm_backend import (
    UnservableAdapterError,
    VLLMSampler,
    adapter_ids,
    build_requests,
    sampling_params,
    servable_rank,
)
from whytune.eval.vllm_parity import BASE, AdapterParityError, Parting, Reference, parting, stop_ids
from whytune.models import fingerprint, load_model, load_tokenizer
from whytune.runs import RunPaths, read_jsonl, write_json

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


def stand_in_greedy(location: str, lora, prompt_ids: list[int], tokens: int, stops: list[int]) -> list[int]:
    """What a correct vLLM returns for the parity probe, computed apart from the code under test: the transformers
    model (with the LoRA request's adapter, if any) picks the most likely token, stop ids excluded, step by step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    if lora is not None:
        model = PeftModel.from_pretrained(model, lora[2])
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(tokens):
            logits = model(input_ids=ids).logits[0, -1]
            logits[stops] = -torch.inf
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, len(prompt_ids) :].tolist()


@pytest.fixture
def fake_vllm(monkeypatch) -> dict:
    """A stand-in for the vllm package that records what the backend asks of it. It continues the parity probe as a
    correct engine would, or, with calls["ignores_adapters"] set, as an engine that silently drops every adapter."""
    calls: dict = {"generate": [], "probe": [], "ignores_adapters": False}

    class LLM:
        def __init__(self, model, **kwargs):
            calls["engine"] = {"model": model, **kwargs}

        def generate(self, prompts, params, lora_request, use_tqdm):
            if "min_tokens" in params[0]:  # the parity probe: greedy, eos suppressed
                calls["probe"].append(lora_request)
                return [
                    out(
                        "",
                        "length",
                        stand_in_greedy(
                            calls["engine"]["model"],
                            None if calls["ignores_adapters"] else lora,
                            prompt["prompt_token_ids"],
                            p["max_tokens"],
                            p["stop_token_ids"],
                        ),
                    )
                    for prompt, p, lora in zip(prompts, params, lora_request)
                ]
            calls["generate"].append((prompts, params, lora_request))
            return [out(f"reply {p['seed']}", "stop" if i % 2 == 0 else "length", []) for i, p in enumerate(params)]

    def out(text: str, finish: str, token_ids: list[int]):
        return types.SimpleNamespace(
            outputs=[types.SimpleNamespace(text=text, finish_reason=finish, token_ids=token_ids)]
        )

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams, fake.__version__ = LLM, lambda **kwargs: kwargs, "stand-in"
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
        "max_loras": 2,  # a spare, empty slot: vLLM's CPU LoRA ops give a base request the last slot's adapter
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


def _reference(tokens: list[int], logits: list[list[float]]) -> Reference:
    return Reference(tokens, torch.tensor(logits))


def test_a_parting_is_judged_by_the_references_margin_where_the_paths_first_differ():
    reference = _reference([0, 2, 1], [[3.0, 1.0, 0.0], [0.0, 0.5, 0.8], [0.0, 4.0, 1.0]])
    assert parting(reference, [0, 2, 1]) == Parting(3, 3, None)
    near_tie = parting(reference, [0, 1, 2])  # parts at step 1, where the reference prefers 2 over 1 by 0.3
    assert (near_tie.agreed, near_tie.tokens) == (1, 3) and near_tie.margin == pytest.approx(0.3)
    assert near_tie.within(0.5) and not near_tie.within(0.2)
    assert parting(reference, [1, 2, 1]).margin == pytest.approx(2.0)  # what comes after the first step is not read
    assert parting(reference, [0, 2]) == Parting(2, 3, float("inf"))  # cut short although eos was suppressed


def test_both_engines_suppress_the_evals_eos_and_every_eos_of_the_models_own():
    def model(eos):
        return types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=eos))

    assert stop_ids(model([1, 106]), 106) == [1, 106]  # Gemma: <eos> and <end_of_turn>
    assert stop_ids(model(2), 7) == [2, 7]
    assert stop_ids(model(None), 7) == [7]


def _trained_arm(cfg, tiny_dir, arm: str, **lora) -> None:
    """A LoRA adapter where the train stage leaves one, with the manifest and stage record the eval stage reads."""
    folder = RunPaths.of(cfg).adapter(arm, 0)
    _adapter(cfg, tiny_dir, folder, **lora)
    write_json(folder / "manifest.json", {"base_model": cfg.model.name, "base_fingerprint": fingerprint(tiny_dir)})
    write_json(folder / "stage.json", {"key": f"stand-in {arm}"})


def _vllm_cfg(tmp_path, cache_dir):
    return validate(
        compose_config(
            "experiment=smoke",
            f"out={tmp_path}",
            f"cache_dir={cache_dir}",
            "arms=[baseline,demos]",
            "eval.backend=vllm",
            "eval.samples=2",
            "eval.forced_choice=false",
            "eval.score=false",
            "eval.vllm_parity_tokens=12",
            # The tiny random model's logits lie within about a unit of one another, so a random adapter moves them by
            # tenths; the stand-in engine computes in float32 as the reference does, so no rounding needs the default.
            "eval.vllm_parity_tolerance=0.01",
        )
    )


def test_vllm_samples_only_after_each_adapter_continues_the_probe_as_peft_does(
    tmp_path, cache_dir, tiny_dir, fake_vllm
):
    cfg = _vllm_cfg(tmp_path, cache_dir)
    _trained_arm(cfg, tiny_dir, "demos", init_lora_weights=False)  # random B: the adapter changes the model
    evaluate(cfg)
    assert fake_vllm["probe"] == [[None, ("demos-seed0", 1, str(RunPaths.of(cfg).adapter("demos", 0)))]]
    paths = RunPaths.of(cfg)
    base = json.loads((paths.eval("baseline", 0) / "vllm_parity.json").read_text())
    demos = json.loads((paths.eval("demos", 0) / "vllm_parity.json").read_text())
    assert base["adapter"] == BASE and base["ok"] and base["vllm"]["margin"] is None
    assert (
        demos["adapter"] == "demos-seed0"
        and demos["ok"]
        and demos["vllm"] == {"agreed": 12, "tokens": 12, "margin": None}
    )
    assert demos["tells_base_apart"] is True  # the base model's path leaves the adapter's by more than a near-tie
    assert demos["vllm_version"] == "stand-in"
    assert len(list(read_jsonl(paths.eval("demos", 0) / "samples.jsonl"))) == 2 * len(read_prompts(paths.prompts))


def test_an_adapter_vllm_ignores_refuses_the_run_by_name_before_any_sample(tmp_path, cache_dir, tiny_dir, fake_vllm):
    cfg = _vllm_cfg(tmp_path, cache_dir)
    _trained_arm(cfg, tiny_dir, "demos", init_lora_weights=False)
    fake_vllm["ignores_adapters"] = True
    with pytest.raises(AdapterParityError, match=r"demos-seed0: vLLM parts from peft at token \d+ of 12") as refused:
        evaluate(cfg)
    assert BASE not in str(refused.value)  # the base model itself is served right
    assert fake_vllm["generate"] == []
    assert not (RunPaths.of(cfg).eval("baseline", 0) / "samples.jsonl").exists()


def test_an_adapter_the_probe_cannot_tell_from_the_base_model_is_said_to_be_unchecked(
    tmp_path, cache_dir, tiny_dir, fake_vllm, caplog
):
    cfg = _vllm_cfg(tmp_path, cache_dir)
    _trained_arm(cfg, tiny_dir, "demos")  # peft's default: B = 0, the adapter does nothing yet
    fake_vllm["ignores_adapters"] = True  # so dropping it goes unseen: all the check can do is say so
    evaluate(cfg)
    record = json.loads((RunPaths.of(cfg).eval("demos", 0) / "vllm_parity.json").read_text())
    assert record["ok"] and record["tells_base_apart"] is False
    assert "demos-seed0 continues the probe as the base model does" in caplog.text


def test_the_parity_check_can_be_turned_off(tmp_path, cache_dir, tiny_dir, fake_vllm):
    cfg = _vllm_cfg(tmp_path, cache_dir)
    cfg.eval.vllm_parity_tokens = 0
    _trained_arm(cfg, tiny_dir, "demos", init_lora_weights=False)
    fake_vllm["ignores_adapters"] = True
    evaluate(cfg)
    assert fake_vllm["probe"] == [] and fake_vllm["generate"]
    assert not (RunPaths.of(cfg).eval("demos", 0) / "vllm_parity.json").exists()
