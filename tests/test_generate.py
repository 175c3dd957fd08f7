"""Sampling: the shared prefix (cache or fast backend) changes nothing but speed; generations stop at end of turn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, Gemma2Config, Gemma3TextConfig, GenerationConfig

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval import fastgen
from whytune.eval.generate import Sampling, encode_prompt, prefill, sample_batch
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.models import GENERATION_TOKENS, _gguf_special_tokens, gguf_path, load_model, load_tokenizer, model_dir

CPU = torch.device("cpu")


def tiny_prompt(tokenizer) -> torch.Tensor:
    """The headline prompt's last 800 tokens: a long shared prefix, yet quick in float64."""
    return encode_prompt(tokenizer, build_prompt(HEADLINE), CPU)[:, -800:]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """The tiny model in float64, where random weights' near-tied logits cannot flip with summation order."""
    cfg = validate(compose_config("experiment=smoke", "out=unused"))
    model = load_model(cfg.model, tiny_dir, CPU).double()
    tokenizer = load_tokenizer(cfg.model, tiny_dir)
    return model, tokenizer, tiny_prompt(tokenizer)


def plain_generate(model, ids: torch.Tensor, n: int, new_tokens: int) -> list[list[int]]:
    """Greedy HF generate from the whole prompt, no cache shared, no eos: the reference."""
    out = model.generate(
        input_ids=ids.expand(n, -1),
        attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[:, ids.shape[1] :].tolist()


def test_prefix_cache_gives_the_same_greedy_text_as_plain_generate(smoke_cfg, tiny_dir):
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    model = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
    ids = encode_prompt(tokenizer, build_prompt(HEADLINE), torch.device("cpu"))
    greedy = Sampling(samples=3, batch_size=3, max_new_tokens=12, temperature=0, top_p=1.0, backend="hf")
    cached = sample_batch(model, tokenizer, ids, prefill(model, ids), 3, greedy, seed=0)
    plain = sample_batch(model, tokenizer, ids, None, 3, greedy, seed=0)
    assert cached == plain
    assert len({text for text, _ in cached}) == 1 and cached[0][0]


@pytest.mark.slow
def test_embedded_model_stops_at_end_of_turn(cache_dir):
    """The real SmolLM2 (converted from its GGUF file) ends a short answer with <|im_end|>, well before the limit."""
    cfg = validate(compose_config("out=unused", f"cache_dir={cache_dir}"))
    location = model_dir(cfg.model, cache_dir)
    tokenizer = load_tokenizer(cfg.model, location)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    model = load_model(cfg.model, location, torch.device("cpu"))
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")[
        "input_ids"
    ]
    greedy = Sampling(samples=2, batch_size=2, max_new_tokens=40, temperature=0, top_p=1.0)
    replies = sample_batch(model, tokenizer, ids, prefill(model, ids), 2, greedy, seed=0)
    assert all(finish == "eos" for _, finish in replies)
    assert "Paris" in replies[0][0]


@pytest.mark.slow
def test_converted_model_takes_its_special_tokens_from_the_gguf_file(cache_dir):
    """The file's metadata, not the transformers release's reading of it, sets eos (5.17 read <|im_start|>)."""
    cfg = validate(compose_config("out=unused", f"cache_dir={cache_dir}"))
    special = _gguf_special_tokens(gguf_path(cfg.model))
    assert special["eos_token"] == ("<|im_end|>", 2)
    location = model_dir(cfg.model, cache_dir)
    tokenizer = load_tokenizer(cfg.model, location)
    config, generation = AutoConfig.from_pretrained(location), GenerationConfig.from_pretrained(location)
    for role, (token, token_id) in special.items():
        assert getattr(tokenizer, role) == token
        if role in GENERATION_TOKENS:
            assert getattr(config, f"{role}_id") == token_id and getattr(generation, f"{role}_id") == token_id


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fast_step_gives_the_logits_of_a_full_forward(tiny, static):
    """Each step's logits equal a plain forward pass over prompt + continuation, for every row, also after finished
    rows have left the batch (rows 2 and 0 kept after step 3) and across blocks of the static cache (2 slots each):
    tokens alone would hide small errors."""
    model, _, ids = tiny
    continuations = torch.randint(0, 512, (3, 6), generator=torch.Generator().manual_seed(0))
    feed = torch.cat([ids[:, -1:].expand(3, 1), continuations], dim=1)
    with torch.no_grad():
        reference = model(input_ids=torch.cat([ids.expand(3, -1), continuations], dim=1)).logits
    reference = reference[:, ids.shape[1] - 1 :]
    cache = fastgen.SuffixCache(prefill(model, ids), rows=3, capacity=7, static=static, block=2)
    forward, rows = fastgen.step_function(model, cache), [0, 1, 2]
    with torch.no_grad(), fastgen.shared_prefix_attention(model):
        for step in range(7):
            if step == 3:
                cache.keep([2, 0])
                rows = [2, 0]
            cache.open_slot()
            logits = forward(feed[rows, step : step + 1], torch.tensor([[ids.shape[1] - 1 + step]]))
            torch.testing.assert_close(logits, reference[rows, step], rtol=0, atol=1e-9)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fast_backend_gives_plain_generate_greedy_tokens(tiny, static):
    """`static` is the fixed-shape step that CUDA replays from a graph; here it runs eagerly."""
    model, _, ids = tiny
    out = fastgen.sample(model, ids, prefill(model, ids), 3, 24, 0.0, 1.0, seed=0, eos_token_id=None, static=static)
    assert out.tokens == plain_generate(model, ids, 3, 24)
    assert out.steps == 24 and not any(out.finished)


@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "disabled"])
def test_fast_backend_matches_generate_through_a_lora_adapter(tiny_dir, adapter):
    cfg = validate(compose_config("experiment=smoke", "out=unused"))
    base = load_model(cfg.model, tiny_dir, CPU).double()
    ids = tiny_prompt(load_tokenizer(cfg.model, tiny_dir))
    bare = plain_generate(base, ids, 2, 16)
    # Random (not zero) LoRA B matrices, so the adapter changes the output.
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    attention = model.config._attn_implementation
    with model.disable_adapter() if not adapter else torch.no_grad():
        expected = plain_generate(model, ids, 2, 16)
        out = fastgen.sample(model, ids, prefill(model, ids), 2, 16, 0.0, 1.0, seed=0, eos_token_id=None)
    assert out.tokens == expected
    assert (expected != bare) == adapter
    assert model.config._attn_implementation == attention


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_eos_ends_a_sample_without_changing_the_others(tiny, static):
    """Sample once without eos; then call a token those replies drew at different steps eos: each reply must stop
    at its first such token and keep its own draws, however many others have left the batch (dynamic: at once)."""
    model, _, ids = tiny
    prefix = prefill(model, ids)
    free = fastgen.sample(model, ids, prefix, 6, 24, 1.0, 1.0, seed=3, eos_token_id=None, static=static).tokens
    eos = max(range(512), key=lambda t: sum(t in row for row in free))
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in free]
    lengths = [len(row) for row in expected]
    assert min(lengths) < max(lengths)  # replies end at different steps: the test checks what it claims
    out = fastgen.sample(model, ids, prefix, 6, 24, 1.0, 1.0, seed=3, eos_token_id=eos, static=static)
    assert out.tokens == expected
    assert out.finished == [eos in row for row in free]
    assert out.steps == max(lengths)
    if not static:
        assert out.rows_computed == sum(lengths) < 6 * out.steps


def test_sampling_is_reproducible_by_seed(tiny):
    model, tokenizer, ids = tiny
    hot = Sampling(samples=4, batch_size=4, max_new_tokens=12, temperature=1.0, top_p=0.9)
    prefix = prefill(model, ids)
    first, again, other = (sample_batch(model, tokenizer, ids, prefix, 4, hot, seed) for seed in (1, 1, 2))
    assert first == again
    assert first != other
    assert len({text for text, _ in first}) == 4


def test_pick_draws_from_the_nucleus_by_inverting_its_cdf():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert [
        fastgen.pick(logits, torch.tensor([u], dtype=torch.float64), 1.0, 1.0).item() for u in (0.1, 0.6, 0.95)
    ] == [0, 1, 2]
    assert fastgen.nucleus(logits.softmax(-1).double(), 0.7)[0].tolist() == pytest.approx([0.5, 0.3, 0.0])
    assert fastgen.pick(logits, torch.tensor([0.99], dtype=torch.float64), 1.0, 0.5).item() == 0


def test_fast_backend_declines_what_it_cannot_do_exactly(tiny):
    """Another architecture (Gemma 2 caps its attention scores, which `attend` does not) and a Gemma 3 that attends both
    ways (EmbeddingGemma); sliding windows, at any length, are followed (tests/test_sliding_window.py)."""
    model, _, ids = tiny
    assert fastgen.supports(model)
    assert fastgen.supports(SimpleNamespace(config=Gemma3TextConfig(sliding_window=512)))
    assert not fastgen.supports(SimpleNamespace(config=Gemma2Config()))
    assert not fastgen.supports(SimpleNamespace(config=Gemma3TextConfig(use_bidirectional_attention=True)))
