"""Training speed, all in one run: the project's train stage against a bare PyTorch LoRA loop on the same model, each
in fp32 and in bf16.

    python scripts/bench_train.py [--batch-size 8] [--seq-len 1024] [--steps 20] [--warmup-steps 3] [--device auto]
        [--precisions fp32,bf16] [--out FILE] [config overrides, e.g. model=tiny-random or experiment=paper]

`stage` is train/sft.py's SFTTrainer (LoRA, assistant-only loss, logging, clipping, scheduler) as the config sets
it up; `bare` is peft's get_peft_model with the same LoRA config on the same model, plain AdamW and nothing else:
forward, backward, step. Both train on the same synthetic chat examples of exactly --seq-len tokens, --batch-size of
them a step (no padding, no gradient accumulation), with the config's gradient checkpointing, on the same device.
Precision `fp32` loads the weights in fp32 and trains without autocast (model.dtype=float32 train.bf16=false);
`bf16` is train.bf16=true, bf16 autocast over the weights the train stage loads (fp32 on CPU, the trained LoRA
weights fp32 everywhere). The first --warmup-steps steps are not timed. Prints, and appends to a JSON list (default
docs/bench/), the tokens/s of each, stage/bare (issue 6's GPU target: at least 0.8) and bf16/fp32, with the CPU's
vector-instruction flags (native bf16 needs avx512_bf16 or AMX) and the precision train.bf16=null (auto) picks.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import peft
import torch
import transformers
import trl
from accelerate import PartialState
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import TrainerCallback

from whytune.benchmarks import cpu_flags, now, record
from whytune.config import CONFIG_DIR, WhytuneConfig, validate
from whytune.models import (
    device_name,
    language_model_only,
    load_model,
    load_tokenizer,
    model_dir,
    native_bf16,
    pick_dtype,
    train_bf16,
)
from whytune.train.sft import _build_trainer

ROOT = Path(__file__).resolve().parents[1]
# Each precision's config overrides: fp32 throughout, or the train stage's bf16 autocast.
PRECISIONS = {"fp32": ["model.dtype=float32", "train.bf16=false"], "bf16": ["train.bf16=true"]}


def synthetic_chat(tokenizer, length: int) -> dict:
    """A chat that the training template renders to exactly `length` tokens: the reply is a run of the word "a",
    one token each (byte-level BPE splits words apart before merging)."""

    def chat(words: int) -> dict:
        return {
            "messages": [
                {"role": "user", "content": "Repeat the word a."},
                {"role": "assistant", "content": " ".join(["a"] * words)},
            ]
        }

    def size(words: int) -> int:
        return len(tokenizer.apply_chat_template(chat(words)["messages"], tokenize=True, return_dict=True)["input_ids"])

    words = length - size(1) + 1
    if words < 1 or size(words) != length:
        raise ValueError(
            f"cannot build a {length}-token chat with this tokenizer (the reply alone starts at "
            f'{size(1)} tokens, or " a" is not one token)'
        )
    return chat(words)


class StepClock(TrainerCallback):
    """Wall time of the optimizer steps after the first `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = now()

    def on_step_end(self, args, state, control, **kwargs):
        self.end = now()


def run_stage(cfg: WhytuneConfig, location: str, example: dict, steps: int, warmup: int) -> float:
    """Seconds for `steps` steps of the train stage, exactly as train_arm builds it."""
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = _build_trainer(
            cfg, location, [example] * (cfg.train.batch_size * (warmup + steps)), Path(checkpoints), seed=0
        )
        clock = StepClock(warmup)
        trainer.add_callback(clock)
        trainer.train()
    expected = (warmup + steps) * cfg.train.batch_size * cfg.train.max_length
    if trainer.data_collator.positions != expected:  # the claim "same batch shape" rests on this
        raise RuntimeError(f"the trainer saw {trainer.data_collator.positions} positions, not {expected}")
    return clock.end - clock.start


def run_bare(cfg: WhytuneConfig, location: str, example: dict, steps: int, warmup: int, device) -> float:
    """Seconds for `steps` steps of a plain loop: the same LoRA model, labels and batch; AdamW, no Trainer."""
    tokenizer = load_tokenizer(cfg.model, location)
    encoded = tokenizer.apply_chat_template(
        example["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = torch.tensor([encoded["input_ids"]] * cfg.train.batch_size, device=device)
    labels = ids.masked_fill(torch.tensor(encoded["assistant_masks"], device=device) == 0, -100)  # assistant-only
    base = load_model(cfg.model, location, device, training=True)
    lora = instantiate(asdict(cfg.train.lora))
    lora.exclude_modules = language_model_only(base)  # as the train stage: a multimodal model's vision tower stays
    model = peft.get_peft_model(base, lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = now()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_bf16(cfg.train, device)):
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return now() - start


def timed(run, tokens: int) -> dict:
    """One variant's figures; the 1-minute load average shows what else the machine was doing."""
    load = os.getloadavg()[0]
    seconds = run()
    row = {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    gc.collect()  # the variant's model goes before the next one loads
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per example, template included")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto", help="auto: the GPU when there is one")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help=f"comma-separated, of {', '.join(PRECISIONS)}: each is timed"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default docs/bench/train-<machine>.json)")
    parser.add_argument("overrides", nargs="*", help="whytune config overrides, e.g. model=tiny-random")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    precisions = args.precisions.split(",")
    if unknown := set(precisions) - set(PRECISIONS):
        raise SystemExit(f"--precisions: unknown {', '.join(sorted(unknown))}; choose among {', '.join(PRECISIONS)}")
    device = PartialState(cpu=args.device == "cpu").device  # the train stage asks the same state for its device
    shape = [
        f"train.batch_size={args.batch_size}",
        f"train.max_length={args.seq_len}",
        "train.grad_accum=1",
        "train.epochs=1",
        f"train.save_steps={args.warmup_steps + args.steps}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        auto = validate(compose("ablate", overrides=["out=unused", *args.overrides, *shape]))  # as the stage runs
        configs = {
            p: validate(compose("ablate", overrides=["out=unused", *args.overrides, *shape, *PRECISIONS[p]]))
            for p in precisions
        }
    location = model_dir(auto.model, Path(auto.cache_dir))
    example = synthetic_chat(load_tokenizer(auto.model, location), args.seq_len)
    tokens = args.steps * args.batch_size * args.seq_len
    rows = {}
    for precision, cfg in configs.items():
        runs = {
            "stage": functools.partial(run_stage, cfg, location, example, args.steps, args.warmup_steps),
            "bare": functools.partial(run_bare, cfg, location, example, args.steps, args.warmup_steps, device),
        }
        for variant, run in runs.items():
            name = f"{variant}-{precision}"
            rows[name] = timed(run, tokens)
            print(
                f"{name:>10}: {rows[name]['seconds']:8.1f} s  {rows[name]['tokens_per_s']:10.1f} tokens/s  "
                f"load {rows[name]['load_before']:.1f}->{rows[name]['load_after']:.1f}",
                flush=True,
            )
    speed = {name: row["tokens_per_s"] for name, row in rows.items()}
    stage_vs_bare = {p: speed[f"stage-{p}"] / speed[f"bare-{p}"] for p in configs}
    both = {"fp32", "bf16"} <= configs.keys()
    bf16_vs_fp32 = {v: speed[f"{v}-bf16"] / speed[f"{v}-fp32"] for v in ("stage", "bare")} if both else {}
    for precision, ratio in stage_vs_bare.items():
        print(f"stage/bare, {precision}: {ratio:.2f}")
    for variant, ratio in bf16_vs_fp32.items():
        print(f"{variant} bf16/fp32: {ratio:.2f}")
    picked = "bf16" if train_bf16(auto.train, device) else "fp32"
    setting = "null (auto)" if auto.train.bf16 is None else str(auto.train.bf16).lower()
    print(f"train.bf16={setting} trains here in {picked}; native bf16: {native_bf16(device)}")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": device_name(device),
        "cpu_flags": cpu_flags(),
        "native_bf16": native_bf16(device),
        "auto_picks": picked,
        "model": auto.model.name,
        "precisions": {
            p: {"dtype": str(pick_dtype(cfg.model, device, training=True)), "bf16_autocast": cfg.train.bf16}
            for p, cfg in configs.items()
        },
        "gradient_checkpointing": auto.train.gradient_checkpointing,
        "lora": asdict(auto.train.lora),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "variants": rows,
        "stage_vs_bare": stage_vs_bare,
        "bf16_vs_fp32": bf16_vs_fp32,
        "command": " ".join(["python"] + sys.argv),
    }
    record(result, args.out, ROOT / "docs" / "bench", "train", device_name(device))


if __name__ == "__main__":
    main(sys.argv[1:])
