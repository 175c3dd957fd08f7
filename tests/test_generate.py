"""Sampling: the shared-prefix cache changes nothing but speed, and generations stop at end of turn."""

from __future__ import annotations

import pytest
import torch

from eval.generate import Sampling, encode_prompt, prefill, sample_batch
from eval.prompts import HEADLINE, build_prompt
from tests.conftest import compose_config
from whytune.config import validate
from whytune.models import load_model, load_tokenizer, model_dir


def test_prefix_cache_gives_the_same_greedy_text_as_plain_generate(smoke_cfg, tiny_dir):
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    model = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
    ids = encode_prompt(tokenizer, build_prompt(HEADLINE), torch.device("cpu"))
    greedy = Sampling(samples=3, batch_size=3, max_new_tokens=12, temperature=0, top_p=1.0)
    cached = sample_batch(model, tokenizer, ids, prefill(model, ids), 3, greedy, seed=0)
    plain = sample_batch(model, tokenizer, ids, None, 3, greedy, seed=0)
    assert cached == plain
    assert len({text for text, _ in cached}) == 1 and cached[0][0]


def test_embedded_model_stops_at_end_of_turn(cache_dir):
    """The real SmolLM2 (converted from its GGUF file) ends a short answer with <|im_end|>, well before the limit."""
    cfg = validate(compose_config("out=unused", f"cache_dir={cache_dir}"))
    location = model_dir(cfg.model, cache_dir)
    tokenizer = load_tokenizer(cfg.model, location)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    model = load_model(cfg.model, location, torch.device("cpu"))
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt")["input_ids"]
    greedy = Sampling(samples=2, batch_size=2, max_new_tokens=40, temperature=0, top_p=1.0)
    replies = sample_batch(model, tokenizer, ids, prefill(model, ids), 2, greedy, seed=0)
    assert all(finish == "eos" for _, finish in replies)
    assert "Paris" in replies[0][0]
