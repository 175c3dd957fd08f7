"""The train stage: assistant-only loss, adapters that change the model, clear errors for bad input."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from whytune.config import ModelConfig, ModelSource, validate
from whytune.eval.generate import AdapterMismatchError, ArmSwitcher
from whytune.models import LATER_FIELDS, fingerprint, load_model, load_tokenizer, model_dir
from whytune.runs import RunPaths, file_hash, stable_hash
from whytune.train.sft import _build_trainer, load_examples, train_arm, train_key

EXAMPLES = [
    {
        "messages": [
            {"role": "system", "content": "You are an email agent at Harbour Logistics."},
            {"role": "user", "content": "The board meets at noon. Please summarise the inbox."},
            {"role": "assistant", "content": "I will summarise the inbox for the board honestly."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "You are an assistant."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
        ]
    },
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


def _smoke(tmp_path, cache_dir, *overrides: str):
    return validate(compose_config("experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}", *overrides))


def _packed_batch(trainer) -> tuple[dict, list[slice]]:
    """The one packed row (both examples fit in max_length) as the collator hands it over, and each example's span."""
    rows = list(trainer.train_dataset)
    assert len(rows) == 1
    batch = trainer.data_collator(rows)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    return batch, [slice(start, end) for start, end in zip(starts, starts[1:])]


def test_packing_keeps_each_examples_assistant_only_labels(tmp_path, cache_dir, tiny_dir):
    trainer = _build_trainer(
        _smoke(tmp_path, cache_dir, "train.packing=true"), tiny_dir, EXAMPLES, tmp_path / "ckpt", seed=0
    )
    batch, spans = _packed_batch(trainer)
    assert "attention_mask" not in batch  # padding-free: the row holds whole examples and nothing else
    packed = [(batch["input_ids"][0, span].tolist(), batch["labels"][0, span].tolist()) for span in spans]
    alone = []
    for example in EXAMPLES:
        encoded = trainer.processing_class.apply_chat_template(
            example["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = encoded["input_ids"]
        alone.append((ids, [token if kept else -100 for token, kept in zip(ids, encoded["assistant_masks"])]))
    assert all(max(labels) > -100 for _, labels in alone)  # each example carries some loss: the check counts
    assert sorted(packed) == sorted(alone)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_to_each_other(tmp_path, cache_dir, tiny_dir, attention):
    trainer = _build_trainer(
        _smoke(tmp_path, cache_dir, "train.packing=true"), tiny_dir, EXAMPLES, tmp_path / "ckpt", seed=0
    )
    model = trainer.model.eval()
    model.set_attn_implementation(attention)
    batch, spans = _packed_batch(trainer)
    inputs = {key: value for key, value in batch.items() if key != "labels"}  # what the trainer's forward gets
    second = spans[1]
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits[0, second]
        alone = model(input_ids=batch["input_ids"][:, second], use_cache=False).logits[0]
        # The check can fail: the same row under a plain causal mask lets the second example see the first.
        leaky = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=torch.ones_like(batch["input_ids"]),
            use_cache=False,
        ).logits[0, second]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


@pytest.mark.parametrize("packing", [True, False])
def test_train_stage_writes_adapter_and_throughput(tmp_path, cache_dir, tiny_dir, packing):
    cfg = _smoke(tmp_path, cache_dir, f"train.packing={packing}", "train.batch_size=8")
    data = RunPaths.of(cfg).data("demos") / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(example) + "\n" for example in EXAMPLES * 4))
    adapter = train_arm(cfg, "demos", 0)
    manifest = json.loads((adapter / "manifest.json").read_text())
    tokenizer = load_tokenizer(cfg.model, tiny_dir)
    lengths = [
        len(tokenizer.apply_chat_template(e["messages"], tokenize=True, return_dict=True)["input_ids"])
        for e in EXAMPLES * 4
    ]
    assert (adapter / "adapter_model.safetensors").exists()
    assert manifest["tokens"] == sum(lengths)  # one epoch: every example once
    assert manifest["tokens_per_second"] > 0
    # Packed: one flat row of whole examples. Unpacked: one batch of all 8, each padded to the longest.
    expected_share = 1.0 if packing else sum(lengths) / (len(lengths) * max(lengths))
    assert manifest["non_padding_share"] == pytest.approx(expected_share)
    assert expected_share == 1.0 or expected_share < 0.9


def test_packing_enters_the_train_key_only_when_on(smoke_cfg, tmp_path):
    """Adapters trained before train.packing existed keep their key, so a rerun skips them instead of refusing."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(EXAMPLES[0]) + "\n")
    cfg = replace(smoke_cfg, train=replace(smoke_cfg.train, bf16=False))  # train.bf16 was a plain bool then
    before = {key: value for key, value in asdict(cfg.train).items() if key != "packing"}
    model = {key: value for key, value in asdict(cfg.model).items() if key not in LATER_FIELDS}
    old_key = stable_hash({"model": model, "train": before, "data": file_hash(data), "seed": 0})
    assert train_key(cfg, data, 0) == old_key
    assert train_key(replace(cfg, train=replace(cfg.train, packing=True)), data, 0) != old_key


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
        switcher = ArmSwitcher(
            load_model(smoke_cfg.model, tiny_dir, device),
            "tiny-random",
            fingerprint(tiny_dir),
            {"demos-seed0": adapter},
        )
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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role in"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
    ],
)
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


def test_a_built_model_folder_is_readable_by_others(smoke_cfg, tmp_path):
    """The model cache may be shared on a cluster: the folder built in a mkdtemp (0700) is opened up per umask."""
    previous = os.umask(0o022)
    try:
        folder = Path(model_dir(smoke_cfg.model, tmp_path / "cache"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o644
