"""Native low precision: auto picks bf16 only where the device computes it natively, bf16 sampling agrees with fp32,
and bf16 training keeps the trained weights in fp32."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from safetensors import safe_open

from tests.conftest import compose_config
from tests.test_train import EXAMPLES
from whytune import models
from whytune.config import Dtype, validate
from whytune.eval import fastgen
from whytune.eval.forced_choice import load_pairs, preferences
from whytune.eval.generate import encode_messages, encode_prompt, prefill
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.models import load_model, load_tokenizer, model_dir, native_bf16_cpu, pick_dtype, train_bf16
from whytune.runner import Timings, record_timings
from whytune.runs import RunPaths, read_jsonl
from whytune.train import sft

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# Measured on SmolLM2-135M, bf16 against fp32 (2-core AVX2 CPU, torch 2.13): greedy replies to QUESTIONS agreed for
# their first 39 and 48 of 48 tokens; forced-choice preferences (mean log-probability per token, coercive minus
# legitimate) differed by at most 0.016 nats over 8 pairs, the replies' own mean log-probabilities by at most 0.010,
# while the preferences of different pairs spread 0.21 nats (standard deviation). The bounds leave room for other
# CPUs' kernels, which sum in another order.
AGREED_TOKENS = 16
PREFERENCE_TOLERANCE = 0.05  # nats per token
QUESTIONS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short email to a colleague asking to move our meeting to Friday.",
]


@pytest.fixture(params=[True, False], ids=["native-bf16", "avx2"])
def native(request, monkeypatch) -> bool:
    """A CPU with native bf16 (AVX512_BF16) or without (AVX2 and FMA only, as the development machine), as torch
    reports it."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: request.param)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return request.param


def test_auto_picks_bf16_where_the_device_has_it_natively(native):
    cfg = validate(compose_config("out=unused"))
    assert cfg.model.dtype == "auto" and cfg.train.bf16 is None
    low = torch.bfloat16 if native else torch.float32
    assert pick_dtype(cfg.model, CPU) == low and train_bf16(cfg.train, CPU) is native
    assert pick_dtype(cfg.model, CPU, training=True) == torch.float32  # fp32 master weights; bf16 autocast computes
    # A GPU (none is needed: only the device's type is read) samples and trains in bf16, as before.
    assert pick_dtype(cfg.model, CUDA) == pick_dtype(cfg.model, CUDA, training=True) == torch.bfloat16
    assert train_bf16(cfg.train, CUDA)


def test_explicit_settings_override_auto(native):
    cfg = validate(compose_config("out=unused", "model.dtype=float32", "train.bf16=false"))
    assert pick_dtype(cfg.model, CPU) == pick_dtype(cfg.model, CUDA) == torch.float32
    assert not train_bf16(cfg.train, CPU) and not train_bf16(cfg.train, CUDA)
    cfg = validate(compose_config("out=unused", "model.dtype=bfloat16", "train.bf16=true"))
    assert pick_dtype(cfg.model, CPU, training=True) == torch.bfloat16 and train_bf16(cfg.train, CPU)


def test_without_torchs_query_the_cpu_flags_decide(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(models, "cpu_flags", lambda: ["avx2", "avx512_bf16", "avx512f", "fma"])
    assert native_bf16_cpu()
    monkeypatch.setattr(models, "cpu_flags", lambda: ["avx2", "fma"])
    assert not native_bf16_cpu()


def test_torchs_query_agrees_with_this_machines_cpu_flags():
    flags = set(models.cpu_flags())
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert native_bf16_cpu() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize(("override", "key"), [("model.dtype=fp32", "model.dtype"), ("train.bf16=auto", "train.bf16")])
def test_unknown_precision_fails_at_startup_naming_the_key(override, key):
    with pytest.raises((ValidationError, ConfigCompositionException)) as error:
        validate(compose_config("out=unused", override))
    assert key in f"{error.value} {error.value.__cause__}"


def test_the_train_key_holds_the_precision_trained_in(native, smoke_cfg, tmp_path):
    """auto is keyed as what it resolves to: an adapter trained when train.bf16 was false by default (on an AVX2 CPU)
    keeps its key there, and one trained otherwise is not mistaken for it."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(EXAMPLES[0]) + "\n")

    def key(bf16: bool | None) -> str:
        return sft.train_key(replace(smoke_cfg, train=replace(smoke_cfg.train, bf16=bf16)), data, 0)

    assert key(None) == key(native) != key(not native)


def test_a_launch_records_the_dtype_the_model_sampled_in(native, smoke_cfg):
    cfg = replace(smoke_cfg, model=replace(smoke_cfg.model, dtype=Dtype.auto))
    record_timings(cfg, Timings())
    (launch,) = read_jsonl(RunPaths.of(cfg).root / "timings.jsonl")
    assert launch["dtype"] == ("bfloat16" if native else "float32")


def test_auto_training_on_a_native_bf16_cpu_computes_in_bf16_from_fp32_weights(tmp_path, cache_dir, monkeypatch):
    """The Trainer's autocast runs the matmuls in bf16 while every weight, the trained LoRA ones and the frozen base,
    stays fp32 through the steps; the adapter saves fp32 and its manifest says how it was trained. The CPU's native
    bf16 is mocked (this one emulates the arithmetic, to the same results)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    cfg = validate(
        compose_config(
            "experiment=smoke",
            f"out={tmp_path / 'run'}",
            f"cache_dir={cache_dir}",
            "model.dtype=auto",  # the tiny model's own is float32
            "train.batch_size=4",
        )
    )
    data = RunPaths.of(cfg).data("demos") / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(example) + "\n" for example in EXAMPLES * 4))
    built, computed = [], []
    build = sft._build_trainer

    def watched(*args, **kwargs):
        trainer = build(*args, **kwargs)
        lora = next(module for name, module in trainer.model.named_modules() if name.endswith("lora_A.default"))
        lora.register_forward_hook(lambda module, inputs, output: computed.append(output.dtype))
        built.append(trainer)
        return trainer

    monkeypatch.setattr(sft, "_build_trainer", watched)
    adapter = sft.train_arm(cfg, "demos", 0)
    (trainer,) = built
    assert trainer.args.bf16 and trainer.state.global_step == 2
    assert computed and set(computed) == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F32"}
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["precision"] == {"bf16": True, "dtype": "float32"}


@pytest.fixture(scope="module")
def smollm2(model_cache):
    """The real SmolLM2-135M in fp32 and in bf16, loaded as the eval loads it (model.dtype). A tiny random model's
    near-uniform logits would part at the first near-tie; this one's replies are confident. Its converted weights
    are stored in bf16, so both hold the same values: what differs is the arithmetic alone."""
    loaded = {}
    for dtype in ("float32", "bfloat16"):
        cfg = validate(compose_config("out=unused", f"cache_dir={model_cache}", f"model.dtype={dtype}"))
        location = model_dir(cfg.model, model_cache)
        loaded[dtype] = load_model(cfg.model, location, CPU).eval()
        assert {p.dtype for p in loaded[dtype].parameters()} == {getattr(torch, dtype)}
    return loaded, load_tokenizer(cfg.model, location)


@pytest.mark.slow
@pytest.mark.parametrize("question", QUESTIONS, ids=["sky", "email"])
def test_bf16_greedy_replies_agree_with_fp32(smollm2, question):
    """Through the fast backend, whose attention takes its softmax in fp32 whatever the model's dtype."""
    loaded, tokenizer = smollm2
    ids = encode_messages(tokenizer, [{"role": "user", "content": question}], CPU)
    replies = [
        fastgen.sample(model, ids, prefill(model, ids), 1, AGREED_TOKENS, 0.0, 1.0, seed=0, eos_token_id=None).tokens[0]
        for model in loaded.values()
    ]
    assert replies[0] == replies[1], [tokenizer.decode(reply) for reply in replies]


@pytest.mark.slow
def test_bf16_forced_choice_preferences_agree_with_fp32(smollm2):
    """The headline prompt's last 300 tokens (the scenario's ending; bf16 is emulated, slow, on an AVX2 CPU) and
    four of its pairs."""
    loaded, tokenizer = smollm2
    prompt = build_prompt(HEADLINE)
    pairs = [pair for pair in load_pairs() if pair.scenario == prompt.scenario][:4]
    ids = encode_prompt(tokenizer, prompt, CPU)[:, -300:]
    fp32, bf16 = (preferences(model, tokenizer, prompt, pairs, prefill(model, ids), ids) for model in loaded.values())
    assert len(fp32) == 4
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < PREFERENCE_TOLERANCE, (fp32, bf16)
    # Where fp32 prefers one reply by more than the tolerance, bf16 prefers the same one.
    assert all(a * b > 0 for a, b in zip(fp32, bf16) if abs(a) > PREFERENCE_TOLERANCE)
