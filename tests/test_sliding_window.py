"""Sliding-window layers in the shared-prefix decode, against plain full passes: tiny random models whose prompt and
reply are both longer than the window. Gemma 3 mixes sliding and full layers (and scales its queries by
query_pre_attn_scalar, not the head size); Mistral slides on every layer, the window read from its config."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM, PreTrainedModel

from whytune.eval import fastgen
from whytune.eval.generate import prefill

WINDOW = 8
PROMPT, REPLY = 21, 24  # both past the window
SIZES: dict[str, Any] = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
SIZES |= {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW, "initializer_range": 0.2}
SIZES |= {"tie_word_embeddings": False}  # tied, a random Gemma repeats its input token


def tiny(family: str) -> PreTrainedModel:
    """A tiny random model in float64, where a wrong window shows as an error far above summation noise."""
    torch.manual_seed(0)
    if family == "gemma3":
        layers = ["sliding_attention", "full_attention", "sliding_attention"]
        model: PreTrainedModel = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=3, layer_types=layers, **SIZES))
    else:
        model = MistralForCausalLM(MistralConfig(num_hidden_layers=2, **SIZES))
    return model.double().eval()


@pytest.fixture(scope="module", params=["gemma3", "mistral"])
def model(request):
    return tiny(request.param)


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(1))


def test_the_fast_backend_takes_sliding_windows_at_any_length(model):
    assert fastgen.supports(model)
    # The prefix cache keeps a window's worth on the sliding layers: `attend` maps what it holds to positions.
    held = [layer.keys.shape[2] for layer in prefill(model, torch.zeros(1, PROMPT, dtype=torch.long)).layers]
    assert set(held) == ({WINDOW - 1, PROMPT - 1} if isinstance(model, Gemma3ForCausalLM) else {WINDOW - 1})


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fast_step_gives_the_logits_of_a_full_forward_past_the_window(model, prompt, static):
    """Each step's logits equal a plain forward pass over prompt + continuation, as the reply leaves first the prompt
    and then its own first tokens behind the window; also after finished rows have left the batch (rows 2 and 0 kept
    after step 5) and across blocks of the static cache (3 slots each, so a block straddles the window's edge)."""
    continuations = torch.randint(0, 256, (3, REPLY - 1), generator=torch.Generator().manual_seed(2))
    feed = torch.cat([prompt[:, -1:].expand(3, 1), continuations], dim=1)
    with torch.no_grad():
        reference = model(input_ids=torch.cat([prompt.expand(3, -1), continuations], dim=1)).logits[:, PROMPT - 1 :]
    cache = fastgen.SuffixCache(prefill(model, prompt), rows=3, capacity=REPLY, static=static, block=3)
    forward, rows = fastgen.step_function(model, cache), [0, 1, 2]
    with torch.no_grad(), fastgen.shared_prefix_attention(model):
        for step in range(REPLY):
            if step == 5:
                cache.keep([2, 0])
                rows = [2, 0]
            cache.open_slot()
            logits = forward(feed[rows, step : step + 1], torch.tensor([[PROMPT - 1 + step]]))
            torch.testing.assert_close(logits, reference[rows, step], rtol=0, atol=1e-9)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fast_backend_gives_the_greedy_tokens_of_plain_full_passes(model, prompt, static):
    """The reference runs the whole sequence at every step (`generate` without a cache), no window cache involved."""
    out = fastgen.sample(model, prompt, prefill(model, prompt), 2, REPLY, 0.0, 1.0, 0, eos_token_id=None, static=static)
    with torch.no_grad():
        plain = model.generate(
            input_ids=prompt.expand(2, -1),
            attention_mask=torch.ones(2, PROMPT, dtype=torch.long),
            max_new_tokens=REPLY,
            do_sample=False,
            use_cache=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert out.tokens == plain[:, PROMPT:].tolist()
    assert len(set(out.tokens[0])) > 1  # not one token repeated: the test can fail
