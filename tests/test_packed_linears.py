"""The fast backend's linear layers on oneDNN with packed weights: the same logits to fp32 rounding, every layer's
own forward back afterwards, and nothing packed where it cannot help or would not fit."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from whytune.eval import fastgen
from whytune.eval.generate import prefill
from whytune.models import load_model

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@pytest.fixture
def model(smoke_cfg, tiny_dir):
    return load_model(smoke_cfg.model, tiny_dir, CPU)  # the tiny model is fp32


def ids(rows: int = 4, length: int = 40) -> torch.Tensor:
    return torch.randint(10, 200, (rows, length), generator=torch.Generator().manual_seed(0))


def linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@torch.no_grad()
def logits(model, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch).logits


def test_packed_logits_equal_the_plain_ones_to_fp32_rounding_and_the_layers_come_back(model):
    batch = ids()
    plain = logits(model, batch)
    with fastgen.packed_linears(model, rows=4) as packed:
        fast = logits(model, batch)
    assert packed == len(linears(model)) > 0
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-4)
    assert not any("forward" in vars(m) for m in model.modules())
    assert torch.equal(logits(model, batch), plain)


def test_a_lora_adapters_own_layers_are_packed_too(model):
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    batch = ids()
    plain = logits(lora, batch)
    with fastgen.packed_linears(lora, rows=4) as packed:
        fast = logits(lora, batch)
    assert packed == len(linears(lora)) > len([n for n, _ in lora.named_modules() if n.endswith("lora_A.default")])
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_layers_come_back_when_the_body_raises(model):
    with pytest.raises(RuntimeError, match="stop"), fastgen.packed_linears(model, rows=1):
        raise RuntimeError("stop")
    assert not any("forward" in vars(m) for m in model.modules())


def test_nothing_is_packed_in_float64_or_without_the_memory_for_a_copy(model, monkeypatch):
    with fastgen.packed_linears(model.double(), rows=4) as packed:
        assert packed == 0
    model.float()
    monkeypatch.setattr(fastgen, "free_memory", lambda: 0)
    with fastgen.packed_linears(model, rows=4) as packed:
        assert packed == 0
    assert not any("forward" in vars(m) for m in model.modules())


def test_the_fast_backend_samples_through_the_packed_layers(model, monkeypatch):
    calls = []
    real = fastgen.packed_linear
    monkeypatch.setattr(fastgen, "packed_linear", lambda *args: calls.append(1) or real(*args))
    prompt = ids(1, 60)
    out = fastgen.sample(model, prompt, prefill(model, prompt), 3, 5, 0.0, 1.0, seed=0, eos_token_id=None)
    assert [len(t) for t in out.tokens] == [5, 5, 5]
    assert len(calls) == 5 * len(linears(model))
