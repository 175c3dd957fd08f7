"""Gemma 3 as the Hub ships it from 4B up: Gemma3ForConditionalGeneration, a vision tower and a projector beside the
language model, whose sizes sit under text_config. A tiny random one, built offline with the tiny model's tokenizer.

LoRA adapts the language model alone; the adapter's weight names are the checkpoint's own (model.language_model...),
which vLLM maps when it serves that checkpoint; the fingerprint and the eval's prefix cache read the text config.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

from tests.conftest import compose_config
from whytune.config import ModelSource, validate
from whytune.eval import fastgen
from whytune.eval.generate import ArmSwitcher, Sampling, encode_messages, prefill, sample_batch
from whytune.models import empty_model, fingerprint, load_model
from whytune.train.sft import _build_trainer, save_adapter

CPU = torch.device("cpu")
EXAMPLE = {
    "messages": [
        {"role": "system", "content": "You are an email agent."},
        {"role": "user", "content": "Summarise the inbox."},
        {"role": "assistant", "content": "Two emails: the board meets at noon."},
    ]
}
GREEDY = Sampling(samples=1, batch_size=1, max_new_tokens=24, temperature=0, top_p=1.0)  # past the window too


def build_tiny_multimodal(folder: Path, tokenizer_dir: str) -> None:
    """A tiny random Gemma3ForConditionalGeneration with the tiny model's tokenizer, saved as the Hub's would be. Its
    language model's layers alternate sliding-window and full attention; the window (16 tokens) is shorter than the
    prompts here. The vision tower is Gemma 3's shape: no pooling head, 28 / 14 = 2 x 2 patches, pooled to 4 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "vocab_size": len(tokenizer),
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        **{f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("pad", "bos", "eos")},
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision |= {"image_size": 28, "patch_size": 14, "vision_use_head": False}
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory, tiny_dir):
    """A run's config with the tiny multimodal model (the smoke experiment's otherwise), and the model's folder."""
    folder = tmp_path_factory.mktemp("tiny-gemma3-multimodal")
    build_tiny_multimodal(folder, tiny_dir)
    cfg = validate(compose_config("experiment=smoke", "out=unused", f"cache_dir={folder}"))
    model_cfg = replace(cfg.model, name="tiny-gemma3-multimodal", source=ModelSource.pretrained, path=str(folder))
    return replace(cfg, model=model_cfg), str(folder)


def test_lora_adapts_the_language_model_alone_and_the_eval_samples_from_its_adapter(multimodal, tmp_path):
    cfg, location = multimodal
    trainer = _build_trainer(cfg, location, [EXAMPLE] * 2, tmp_path / "ckpt", seed=0)
    base = load_model(cfg.model, location, CPU)
    assert type(base) is Gemma3ForConditionalGeneration  # loaded whole: the checkpoint's own weight names
    linear = {name for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)}
    language = {name for name in linear if name.startswith("model.language_model.")}
    assert len(language) == 7 * 2 and any(".vision_tower." in name for name in linear)  # the check can fail
    adapted = {
        name.removeprefix("base_model.model.") for name, m in trainer.model.named_modules() if hasattr(m, "lora_A")
    }
    assert adapted == language  # all-linear, less the vision tower (and lm_head, as peft leaves the output layer)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in name and "lora_" in name for name in trainable)

    trainer.args.max_steps, trainer.args.save_strategy = 1, "no"
    assert math.isfinite(trainer.train().training_loss)
    adapter = tmp_path / "adapter"
    save_adapter(trainer, str(adapter))
    with safe_open(adapter / "adapter_model.safetensors", "pt") as saved:
        keys = list(saved.keys())
    # vLLM's Gemma3ForConditionalGeneration maps model.language_model. onto its language model's layers.
    assert len(keys) == 2 * len(language) and all(k.startswith("base_model.model.model.language_model.") for k in keys)

    (adapter / "manifest.json").write_text(json.dumps({"base_fingerprint": fingerprint(location)}))
    switcher = ArmSwitcher(base, cfg.model.name, fingerprint(location), {"a": adapter})
    tokenizer = trainer.processing_class
    asked = encode_messages(tokenizer, EXAMPLE["messages"][:2], CPU)
    assert asked.shape[1] > 16  # past the sliding window
    hf = replace(GREEDY, backend="hf")
    with switcher.use("a") as model:
        assert fastgen.supports(model)  # sliding layers and all
        cache = prefill(model, asked)
        # The cache follows the language model's layers: a window on the sliding one, everything on the full one.
        assert [layer.is_sliding for layer in cache.layers] == [True, False]
        fast = sample_batch(model, tokenizer, asked, cache, 1, GREEDY, seed=0)
        cached = sample_batch(model, tokenizer, asked, cache, 1, hf, seed=0)
        plain = sample_batch(model, tokenizer, asked, None, 1, hf, seed=0)  # HF generate on the whole prompt
    assert fast == cached == plain and fast[0][0] and all(finish in ("eos", "length") for _, finish in fast)


def test_the_fingerprint_reads_the_language_models_sizes(multimodal, tiny_dir):
    _, location = multimodal
    text = AutoConfig.from_pretrained(location).get_text_config()
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")
    picked = {"model_type": "gemma3"} | {key: getattr(text, key) for key in keys}
    assert None not in picked.values()
    assert fingerprint(location) == hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
    # A text-only model's fingerprint is what it was before, so the adapters trained on it still apply.
    config = json.loads((Path(tiny_dir) / "config.json").read_text())
    before = {key: config.get(key) for key in ("model_type", *keys)}
    assert fingerprint(tiny_dir) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]


def test_an_empty_rank_builds_gemmas_buffers_as_loading_does(multimodal):
    """Under FSDP the ranks other than 0 build the model empty and keep their own non-persistent buffers (here
    Gemma's embedding scale and rotary frequencies, sliding and full)."""
    cfg, location = multimodal
    whole = dict(load_model(cfg.model, location, CPU).named_buffers())
    empty = empty_model(cfg.model, location, torch.float32)
    assert all(p.is_meta for p in empty.parameters())
    assert empty.get_output_embeddings().weight is empty.get_input_embeddings().weight  # tied, as Gemma's are
    buffers = dict(empty.named_buffers())
    assert any("embed_scale" in name for name in buffers) and buffers.keys() == whole.keys()
    assert all(torch.equal(buffer, whole[name]) for name, buffer in buffers.items())
