"""The train stage: assistant-only loss, adapters that change the model, clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.generate import AdapterMismatchError, ArmSwitcher
from train.sft import _build_trainer, load_examples
from whytune.config import ModelConfig, ModelSource
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir

EXAMPLES = [
    {"messages": [
        {"role": "system", "content": "You are an email agent at Harbour Logistics."},
        {"role": "user", "content": "The board meets at noon. Please summarise the inbox."},
        {"role": "assistant", "content": "I will summarise the inbox for the board honestly."},
    ]},
    {"messages": [
        {"role": "system", "content": "You are an assistant."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]},
]


def test_loss_mask_covers_only_the_assistant_reply(smoke_cfg, tiny_dir, tmp_path):
    trainer = _build_trainer(smoke_cfg, tiny_dir, EXAMPLES, tmp_path / "ckpt", seed=0)
    tokenizer = trainer.processing_class
    for example, row in zip(EXAMPLES, trainer.train_dataset):
        batch = trainer.data_collator([row])
        labels = batch["labels"][0]
        kept = labels[labels != -100]
        assert tokenizer.decode(kept) == example["messages"][-1]["content"] + tokenizer.eos_token
        assert (labels != -100).sum() < len(labels) / 2  # the prompt carries no loss


def test_eos_is_the_end_of_turn_token(tiny_dir, smoke_cfg):
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(EXAMPLES[0]["messages"], tokenize=False)
    assert text.count("<|im_end|>") == 3


def _train_tiny_adapter(cfg, tiny_dir, folder: Path) -> Path:
    trainer = _build_trainer(cfg, tiny_dir, EXAMPLES * 4, folder / "ckpt", seed=0)
    trainer.args.learning_rate = 5e-2  # large enough that the adapter visibly moves the logits
    trainer.train()
    trainer.model.save_pretrained(folder / "adapter")
    manifest = {"base_model": cfg.model.name, "base_fingerprint": fingerprint(tiny_dir)}
    (folder / "adapter" / "manifest.json").write_text(json.dumps(manifest))
    return folder / "adapter"


def test_adapter_changes_output_and_baseline_equals_base(smoke_cfg, tiny_dir, tmp_path):
    adapter = _train_tiny_adapter(smoke_cfg, tiny_dir, tmp_path)
    device = torch.device("cpu")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    reference = load_model(smoke_cfg.model, tiny_dir, device)
    with torch.no_grad():
        base_logits = reference(ids).logits
        switcher = ArmSwitcher(load_model(smoke_cfg.model, tiny_dir, device), "tiny-random", fingerprint(tiny_dir),
                               {"demos-seed0": adapter})
        with switcher.use(None) as model:
            assert torch.equal(model(ids).logits, base_logits)
        with switcher.use("demos-seed0") as model:
            assert (model(ids).logits - base_logits).abs().max() > 1e-3


def test_adapter_for_another_base_model_is_refused(smoke_cfg, tiny_dir, tmp_path):
    adapter = _train_tiny_adapter(smoke_cfg, tiny_dir, tmp_path)
    manifest = json.loads((adapter / "manifest.json").read_text())
    manifest.update(base_model="qwen2.5-7b-instruct", base_fingerprint="0123456789abcdef")
    (adapter / "manifest.json").write_text(json.dumps(manifest))
    base = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
    with pytest.raises(AdapterMismatchError, match="trained for base model 'qwen2.5-7b-instruct'"):
        ArmSwitcher(base, "tiny-random", fingerprint(tiny_dir), {"demos-seed0": adapter})


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "role in"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
])
def test_malformed_data_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(EXAMPLES[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"train.jsonl:2: .*{message}"):
        load_examples(path)


@pytest.mark.parametrize("path", ["/nonexistent/model", "./not-here"])
def test_missing_model_path_is_named(tmp_path, path):
    cfg = ModelConfig(name="local", source=ModelSource.pretrained, path=path)
    with pytest.raises(FileNotFoundError, match=rf"model.path='{path}' is not a model folder"):
        model_dir(cfg, tmp_path)
