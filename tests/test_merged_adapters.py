"""ArmSwitcher merges an arm's LoRA into the base weights while it is used: the same log-probabilities and tokens as
the adapter active (unmerged), layers it cannot merge kept active, and the base model back bit for bit afterwards."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval import fastgen
from whytune.eval.generate import ArmSwitcher, Sampling, encode_messages, prefill, sample_batch
from whytune.models import fingerprint, load_model, load_tokenizer

CPU = torch.device("cpu")
# Merged and active differ only in summation order: in float32 their log-probabilities differ by about 1e-6.
FP32_ATOL = 1e-5
SEQUENCE = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))
LORAS = {
    "a": {"lora_dropout": 0.1},
    "b": {},
    "dora": {"use_dora": True},
    "bias": {"lora_bias": True},
    "head": {"target_modules": ["q_proj", "lm_head"]},  # the tiny model's lm_head weight is its input embedding
    "saved": {"modules_to_save": ["lm_head"]},
}


@pytest.fixture(scope="module")
def model_cfg():
    return validate(compose_config("experiment=smoke", "out=unused")).model


@pytest.fixture(scope="module")
def adapters(model_cfg, tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """One adapter of each kind in LORAS for the tiny model, its B matrices random (not zero) so that it matters,
    saved with the manifest the train stage writes."""
    root = tmp_path_factory.mktemp("adapters")
    manifest = json.dumps({"base_model": model_cfg.name, "base_fingerprint": fingerprint(tiny_dir)})
    for seed, (name, lora) in enumerate(LORAS.items()):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **{"target_modules": "all-linear", **lora})
        with warnings.catch_warnings():  # peft warns of what these odd adapters are for: a tied lm_head, a bias
            warnings.simplefilter("ignore")
            model = get_peft_model(load_model(model_cfg, tiny_dir, CPU), config)
            if "modules_to_save" in lora:  # the arm's own lm_head starts as a copy of the base one: change it
                head = model.base_model.model.lm_head.modules_to_save["default"].weight
                head.data += 0.1 * torch.randn_like(head)
            model.save_pretrained(root / name)
        (root / name / "manifest.json").write_text(manifest)
    return {name: root / name for name in LORAS}


def switcher(model_cfg, tiny_dir, adapters, names: list[str], dtype=torch.float32) -> ArmSwitcher:
    base = load_model(model_cfg, tiny_dir, CPU).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ArmSwitcher(base, model_cfg.name, fingerprint(tiny_dir), {name: adapters[name] for name in names})


@torch.no_grad()
def logprobs(model) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=SEQUENCE).logits, dim=-1)


def active(arms: ArmSwitcher, name: str) -> torch.Tensor:
    """The reference: log-probabilities with the adapter active as peft runs it, unmerged (outside `use`)."""
    arms.model.set_adapter(name)
    return logprobs(arms.model)


def lora_layers(arms: ArmSwitcher, name: str) -> dict[str, LoraLayer]:
    return {path: m for path, m in arms.model.named_modules() if isinstance(m, LoraLayer) and name in m.lora_A}


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}


def assert_unchanged(arms: ArmSwitcher, before: dict[str, torch.Tensor]) -> None:
    after = state(arms.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not any(m.merged for m in arms.model.modules() if isinstance(m, LoraLayer))


def test_a_merged_arm_scores_as_its_active_adapter(model_cfg, tiny_dir, adapters):
    """Every LoRA layer is merged (dropout is the identity in eval mode) and none adds its delta again."""
    arms = switcher(model_cfg, tiny_dir, adapters, ["a", "b"])
    with arms.use(None) as model:
        base = logprobs(model)
    for name in ("a", "b"):
        expected = active(arms, name)
        with arms.use(name) as model:
            assert all(m.merged for m in lora_layers(arms, name).values())
            merged = logprobs(model)
        torch.testing.assert_close(merged, expected, rtol=0, atol=FP32_ATOL)
        assert (expected - base).abs().max() > 0.1  # the adapter matters far beyond the tolerance


def test_leaving_an_arm_restores_the_base_model_bit_for_bit(model_cfg, tiny_dir, adapters):
    """After each `use`, returned from or raised out of, every parameter and buffer is what it was, and the
    baseline equals a freshly loaded base model exactly."""
    arms = switcher(model_cfg, tiny_dir, adapters, ["a", "b"])
    before = state(arms.model)
    for name in ["a", None, "b", "a", "b", None, "a"]:
        with arms.use(name) as model:
            logprobs(model)
        assert_unchanged(arms, before)
        with pytest.raises(RuntimeError, match="the body failed"), arms.use(name) as model:
            logprobs(model)
            raise RuntimeError("the body failed")
        assert_unchanged(arms, before)
    with arms.use(None) as model:
        assert torch.equal(logprobs(model), logprobs(load_model(model_cfg, tiny_dir, CPU)))


def test_fast_sampling_of_a_merged_arm_gives_the_active_adapters_tokens(model_cfg, tiny_dir, adapters):
    """Greedy, in float64, where random weights' near-tied logits cannot flip with summation order."""
    arms = switcher(model_cfg, tiny_dir, adapters, ["a"], torch.float64)
    tokenizer = load_tokenizer(model_cfg, tiny_dir)
    ids = encode_messages(tokenizer, [{"role": "user", "content": "Read the inbox and act. " * 20}], CPU)
    greedy = Sampling(samples=2, batch_size=2, max_new_tokens=16, temperature=0, top_p=1.0, backend="fast")
    assert fastgen.supports(arms.model)

    def sample(model) -> list[tuple[str, str]]:
        return sample_batch(model, tokenizer, ids, prefill(model, ids), 2, greedy, seed=0)

    with arms.use(None) as model:
        base = sample(model)
    arms.model.set_adapter("a")
    expected = sample(arms.model)
    with arms.use("a") as model:
        merged = sample(model)
    assert merged == expected != base


@pytest.mark.parametrize(
    ("name", "kept_active"),
    [
        ("dora", lambda path: True),
        ("bias", lambda path: True),
        ("head", lambda path: path.endswith("lm_head")),
        ("saved", lambda path: False),
    ],
    ids=["dora", "lora_bias", "tied_lm_head", "modules_to_save"],
)
def test_layers_it_cannot_merge_keep_the_adapter_active(model_cfg, tiny_dir, adapters, name, kept_active):
    """DoRA and a trained LoRA bias stay active everywhere; a LoRA on the tied lm_head stays active there alone;
    with modules_to_save every LoRA layer merges and the arm's own lm_head runs. Each scores as its active adapter,
    and the base model comes back bit for bit."""
    arms = switcher(model_cfg, tiny_dir, adapters, [name])
    before = state(arms.model)
    with arms.use(None) as model:
        base = logprobs(model)
    expected = active(arms, name)
    with arms.use(name) as model:
        layers = lora_layers(arms, name)
        assert [path for path, m in layers.items() if not m.merged] == [path for path in layers if kept_active(path)]
        got = logprobs(model)
    torch.testing.assert_close(got, expected, rtol=0, atol=FP32_ATOL)
    assert (expected - base).abs().max() > 0.1
    assert_unchanged(arms, before)
