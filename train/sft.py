"""LoRA SFT of one arm with TRL, loss on assistant tokens only.

Runs unchanged in-process (the orchestrator) or under `accelerate launch --config_file configs/accelerate/<x>.yaml
-m whytune.train.sft arms=[demos] seeds=[0]` (DDP, FSDP2 or DeepSpeed ZeRO-3): every rank trains and takes part in
gathering the weights, only the main process writes the adapter, its manifest and the wandb run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from transformers import TrainerCallback

from whytune import runs, tracking
from whytune.config import CONFIG_PATH, WhytuneConfig, validate
from whytune.models import (
    fingerprint,
    language_model_only,
    load_model,
    load_tokenizer,
    model_dir,
    model_key,
    pick_device,
    pick_dtype,
    train_bf16,
)
from whytune.runs import RunPaths, file_hash, mark_done, provenance, read_jsonl, stable_hash, stage_done, write_json

ROLES = {"system", "user", "assistant"}


def load_examples(path: Path) -> list[dict]:
    """Chat examples from train.jsonl, each checked so a bad line is reported by file and line."""
    rows = []
    for number, row in enumerate(read_jsonl(path), start=1):
        _check_example(row, f"{path}:{number}")
        rows.append({"messages": row["messages"]})
    if not rows:
        raise ValueError(f"{path}: no training examples")
    return rows


def _check_example(row: dict, where: str) -> None:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: each message needs a role in {sorted(ROLES)} and a string content; got {message!r}"
            )
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's reply (the loss falls on it)")


def train_key(cfg: WhytuneConfig, data_file: Path, seed: int) -> str:
    """Everything that changes the adapter; a rerun with the same key skips training."""
    train = asdict(cfg.train)
    # The precision this machine trains in, not the setting: auto keeps the key of an adapter trained before it existed
    # (bf16 false then, on CPU) where it resolves as it did, and changes it where it trains otherwise.
    train["bf16"] = train_bf16(cfg.train, pick_device())
    if not train["packing"]:
        del train["packing"]  # adapters trained before the option existed keep their key
    return stable_hash({"model": model_key(cfg.model), "train": train, "data": file_hash(data_file), "seed": seed})


def train_arm(cfg: WhytuneConfig, arm: str, seed: int) -> Path:
    """Train one arm at one seed; returns the adapter folder. Resumes from the last checkpoint if interrupted."""
    from accelerate import PartialState

    paths = RunPaths.of(cfg)
    data_file = paths.data(arm) / "train.jsonl"
    examples = load_examples(data_file)
    key = train_key(cfg, data_file, seed)
    adapter_dir = paths.adapter(arm, seed)
    if stage_done(adapter_dir, key):
        return adapter_dir

    # cpu=True where there is no GPU, as the Trainer's use_cpu will say: otherwise a launch with a GPU-only
    # accelerate file (fsdp2.yaml) starts every rank undistributed and the barrier below lets them all through.
    state = PartialState(cpu=not torch.cuda.is_available())
    location = model_dir(cfg.model, Path(cfg.cache_dir)) if state.is_main_process else None
    state.wait_for_everyone()  # rank 0 converts or builds the model folder once; the others then read it
    location = location or model_dir(cfg.model, Path(cfg.cache_dir))
    run = tracking.start(cfg, "train", arm, seed) if state.is_main_process else None
    trainer = _build_trainer(
        cfg, location, examples, paths.seed_dir(arm, seed) / "checkpoints", seed, track=run is not None
    )
    checkpoints = sorted(Path(trainer.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    speed = throughput(trainer, result.metrics["train_runtime"])
    if state.is_main_process:
        print(
            f"[train] {arm} seed {seed}: {speed['tokens']} tokens in {result.metrics['train_runtime']:.1f} s, "
            f"{speed['tokens_per_second']:.1f} tokens/s, {100 * speed['non_padding_share']:.1f}% of batch "
            f"positions not padding",
            flush=True,
        )
    _save(
        trainer,
        state,
        adapter_dir,
        {
            **provenance(cfg),
            "arm": arm,
            "seed": seed,
            "key": key,
            "base_model": cfg.model.name,
            "base_fingerprint": fingerprint(location),
            "data_file": str(data_file),
            "data_sha256": file_hash(data_file),
            "examples": len(examples),
            "world_size": state.num_processes,
            "precision": precision(cfg, state.device),
            "train_loss": result.training_loss,
            **speed,
            "metrics": result.metrics,
            "log_history": trainer.state.log_history,
        },
    )
    if state.is_main_process:
        mark_done(adapter_dir, key)
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    if run is not None:
        run.finish()
    state.wait_for_everyone()
    return adapter_dir


def precision(cfg: WhytuneConfig, device: torch.device) -> dict:
    """What the adapter's manifest records of how it was trained: bf16 autocast or not, and the dtype the base model's
    weights were loaded in (the LoRA weights, those trained, are fp32 either way)."""
    return {
        "bf16": train_bf16(cfg.train, device),
        "dtype": str(pick_dtype(cfg.model, device, training=True)).removeprefix("torch."),
    }


def _build_trainer(
    cfg: WhytuneConfig, location: str, examples: list[dict], checkpoints: Path, seed: int, track: bool = False
):
    """The SFTTrainer; `track` adds wandb (whose run the caller has started) to the Trainer's integrations."""
    from accelerate import PartialState
    from datasets import Dataset
    from hydra.utils import instantiate
    from trl import SFTConfig, SFTTrainer

    device = PartialState().device  # this rank's own GPU under a multi-GPU launch (pick_device would say cuda:0)
    tokenizer = load_tokenizer(cfg.model, location)
    tokenizer.padding_side = "right"  # training pads on the right; generation sets left
    check_lengths(tokenizer, examples, cfg.train.max_length)
    t = cfg.train
    args = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        warmup_steps=t.warmup if t.warmup < 1 else int(t.warmup),
        max_length=t.max_length,
        packing=t.packing,
        packing_strategy="bfd",  # whole examples, padding-free (position_ids restart per example): no cross-attention
        assistant_only_loss=True,
        eos_token=tokenizer.eos_token,
        bf16=train_bf16(t, device),
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=1,
        report_to=[name for name in (t.report_to, "wandb" if track else "none") if name != "none"] or "none",
        seed=seed,
        use_cpu=device.type == "cpu",
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )
    # Loaded after the arguments: under DeepSpeed ZeRO-3 they switch on sharded loading (zero.Init).
    model = load_model(cfg.model, location, device, training=True)
    lora = instantiate(asdict(t.lora))
    lora.exclude_modules = language_model_only(model)  # a multimodal model's vision tower stays as it is
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=lora,
    )
    # Wrapped after construction: TRL refuses a collator of our own with padding-free packing.
    trainer.data_collator = TokenCount(trainer.data_collator)
    trainer.add_callback(ShareCheckpoints())
    return trainer


class ShareCheckpoints(TrainerCallback):
    """Each checkpoint readable as the umask allows, like every folder a stage saves (safetensors writes the weights
    0600 whatever the umask): an interrupted run's checkpoints stay in the run folder."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            runs.share_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")


@dataclass
class TokenCount:
    """The trainer's collator, counting real tokens and all positions of the batches it builds: positions that are
    padding cost compute and train nothing.

    Counted in this process as batches are built (the trainer uses no loader workers). Accelerate builds one batch
    ahead, so a run stopped mid-epoch (max_steps, fractional epochs) counts one batch it did not train on.
    """

    collate: Callable[[list[dict]], dict]
    tokens: int = 0
    positions: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        ids = batch["input_ids"]
        self.positions += ids.numel()
        # Padding-free packing hands one flat row of whole examples and no attention mask: every position is real.
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        return batch


def throughput(trainer, runtime_s: float) -> dict:
    """Real tokens trained on per second of training and the share of batch positions that were real, over all
    ranks. After a resume: of this session only, like the Trainer's train_runtime."""
    count = trainer.data_collator
    tokens, positions = trainer.accelerator.reduce(
        torch.tensor([count.tokens, count.positions], device=trainer.args.device), "sum"
    ).tolist()
    return {"tokens": tokens, "tokens_per_second": tokens / runtime_s, "non_padding_share": tokens / max(positions, 1)}


def check_lengths(tokenizer, examples: list[dict], max_length: int) -> None:
    """Truncation would cut the reply, the very tokens the loss is on: refuse instead of training on less."""
    lengths = [
        len(tokenizer.apply_chat_template(e["messages"], tokenize=True, return_dict=True)["input_ids"])
        for e in examples
    ]
    too_long = [i for i, n in enumerate(lengths, start=1) if n > max_length]
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(examples)} examples exceed train.max_length={max_length} tokens "
            f"(longest {max(lengths)}; first at example {too_long[0]}); raise train.max_length"
        )


def _save(trainer, state, adapter_dir: Path, manifest: dict) -> None:
    """Write the adapter into a temporary sibling and rename it into place: never half an adapter.

    Every rank calls save_adapter, which gathers sharded weights (FSDP, ZeRO-3); only the main process writes.
    """
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    save_adapter(trainer, str(tmp))
    if state.is_main_process:
        write_json(tmp / "manifest.json", manifest)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp.rename(adapter_dir)


def save_adapter(trainer, folder: str) -> None:
    """The trainer's save_model, except that under FSDP the trainable (LoRA) weights alone are gathered, whole, into
    rank 0's CPU memory, and the base weights stay sharded: under fsdp2.yaml's SHARDED_STATE_DICT (for the
    checkpoints) save_model writes nothing, and under FULL_STATE_DICT it gathers the whole model. ZeRO-3's save_model
    already gathers the trainable weights alone. Every rank calls it."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(folder)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    # _save writes on the main process only, as save_model does with the state dict it gathered.
    trainer._save(folder, state_dict=get_model_state_dict(trainer.model, options=whole))


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    """Train the arms of `arms` (skipping untrained ones) for every seed; data must already be built."""
    cfg = validate(raw)
    for arm, spec in cfg.arms.items():
        if spec.writer is None:
            continue
        for seed in cfg.seeds:
            print(f"[train] {arm} seed {seed} -> {train_arm(cfg, arm, seed)}")


if __name__ == "__main__":
    main()
