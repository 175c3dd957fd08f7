"""Sampling speed, all in one run: plain batched `generate` against the project's backends, on one long prompt.

    python scripts/bench_generate.py [--samples 32] [--batch-size 32] [--prompt-tokens 2000] [--new-tokens 256]
        [--variants plain,hf,fast] [--bandwidth-gbs N] [--out FILE] [config overrides, e.g. model=qwen2.5-7b-instruct]

Variants: `plain` is `generate` on the whole prompt for every sample; `hf` prefills the prompt once and expands its
cache along the batch for `generate` (eval.backend=hf); `fast` is eval/fastgen.py (eval.backend=fast). All get the
same prompt (the headline eval prompt, cut to --prompt-tokens), the same batches and exactly --new-tokens new tokens
per sample (eos disabled), sampled at temperature 1. Prints, and appends to a JSON list (default docs/bench/), the
prefill and decode seconds and new tokens/s of each, and the speed-ups over plain. On CUDA also the share of the
decode's memory-bandwidth bound (weights and keys/values read per step) achieved. On CPU set
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 (design notes, section 9).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from hydra import compose, initialize_config_dir
from transformers import LogitsProcessor, LogitsProcessorList

from whytune.benchmarks import now, record
from whytune.config import CONFIG_DIR, validate
from whytune.eval import fastgen
from whytune.eval.generate import encode_prompt, prefill
from whytune.eval.prompts import HEADLINE, get_prompts
from whytune.models import device_name, load_model, load_tokenizer, model_dir, pick_device

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTH_GBS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100": 2000}  # by device name, first match


@dataclass
class Timing:
    prefill_s: float
    decode_s: float
    cpu_s: float  # process CPU time: shows how much of the wall time other work on a shared machine took
    load_before: float  # 1-minute load average
    load_after: float


class FirstToken(LogitsProcessor):
    """Notes when `generate` first asks for a next token: the prompt's prefill ends there."""

    def __init__(self):
        self.at: float | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = now()
        return scores


def fit(ids: torch.Tensor, length: int, tail: int = 64) -> torch.Tensor:
    """The prompt cut (or its start repeated) to `length` tokens, keeping its last `tail` (the assistant turn)."""
    head = ids[:, :-tail]
    repeats = -(-(length - tail) // head.shape[1])
    return torch.cat([head.repeat(1, repeats)[:, : length - tail], ids[:, -tail:]], dim=1)


def batches(samples: int, batch_size: int) -> list[int]:
    return [min(batch_size, samples - start) for start in range(0, samples, batch_size)]


def generate_kwargs(ids: torch.Tensor, n: int, new_tokens: int) -> dict:
    """`generate` sampling exactly `new_tokens` (min_new_tokens masks eos) at temperature 1."""
    return dict(
        input_ids=ids.expand(n, -1),
        attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long, device=ids.device),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        pad_token_id=0,
    )


def run_plain(model, ids, sizes, new_tokens) -> tuple[float, float]:
    """Every batch prefills the whole prompt for each of its samples."""
    prefill_s = decode_s = 0.0
    for n in sizes:
        first, start = FirstToken(), now()
        model.generate(**generate_kwargs(ids, n, new_tokens), logits_processor=LogitsProcessorList([first]))
        prefill_s, decode_s = prefill_s + first.at - start, decode_s + now() - first.at
    return prefill_s, decode_s


def run_hf(model, ids, sizes, new_tokens) -> tuple[float, float]:
    """The prompt prefilled once, its cache copied along each batch (eval.backend=hf)."""
    start = now()
    prefix = prefill(model, ids)
    prefill_s, start = now() - start, now()
    for n in sizes:
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(n)
        model.generate(**generate_kwargs(ids, n, new_tokens), **{fastgen.cache_keyword(model): cache})
    return prefill_s, now() - start


def run_fast(model, ids, sizes, new_tokens) -> tuple[float, float]:
    """The prompt prefilled once and read once per step for the whole batch (eval.backend=fast)."""
    start = now()
    prefix = prefill(model, ids)
    prefill_s, start = now() - start, now()
    for seed, n in enumerate(sizes):
        fastgen.sample(model, ids, prefix, n, new_tokens, 1.0, 1.0, seed, eos_token_id=None)
    return prefill_s, now() - start


VARIANTS = {"plain": run_plain, "hf": run_hf, "fast": run_fast}


def timed(variant, model, ids, sizes, new_tokens) -> Timing:
    load, cpu = os.getloadavg()[0], time.process_time()
    prefill_s, decode_s = VARIANTS[variant](model, ids, sizes, new_tokens)
    return Timing(prefill_s, decode_s, time.process_time() - cpu, load, os.getloadavg()[0])


def bandwidth_share(
    model, variant: str, timing: Timing, prompt: int, sizes: list[int], new_tokens: int, gbs: float
) -> float:
    """Decode time at the memory-bandwidth bound over the measured decode time: each step reads every weight once
    and the keys/values it attends to (the prompt's once for `fast`, once per sample for the others)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_size(model)
    total = 0.0
    for n in sizes:
        shared = prompt if variant == "fast" else n * prompt
        total += new_tokens * (weights + per_token * (shared + n * new_tokens / 2))
    return total / (gbs * 1e9) / timing.decode_s


def dtype_size(model) -> int:
    """Bytes per weight, and per cached key or value (the cache takes the model's dtype)."""
    return next(model.parameters()).element_size()


def default_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbs for key, gbs in BANDWIDTH_GBS.items() if key in name), None)


def figures(t: Timing, new_tokens: int, share: float | None) -> dict:
    """One variant's figures; printed at once, so a long run shows its progress."""
    row = {
        **asdict(t),
        "total_s": t.prefill_s + t.decode_s,
        "new_tokens": new_tokens,
        "new_tokens_per_s": new_tokens / (t.prefill_s + t.decode_s),
        "decode_tokens_per_s": new_tokens / t.decode_s,
    }
    if share is not None:
        row["bandwidth_bound_share"] = share
    return row


def show(variant: str, row: dict) -> None:
    share = row.get("bandwidth_bound_share")
    print(
        f"{variant:>5}: prefill {row['prefill_s']:8.1f} s  decode {row['decode_s']:8.1f} s  "
        f"{row['new_tokens_per_s']:9.1f} new tokens/s ({row['decode_tokens_per_s']:.1f} in decode)  "
        f"cpu {row['cpu_s']:.0f} s  load {row['load_before']:.1f}->{row['load_after']:.1f}"
        + ("" if share is None else f"  {100 * share:.1f}% of the bandwidth bound"),
        flush=True,
    )


def report(args, cfg, model, ids, rows: dict[str, dict]) -> dict:
    """The speed-ups over plain, printed; everything as a JSON-ready dict."""
    speedups = {
        f"{v}_vs_plain": rows["plain"]["total_s"] / rows[v]["total_s"] for v in rows if "plain" in rows and v != "plain"
    }
    for name, ratio in speedups.items():
        print(f"{name}: {ratio:.2f}x")
    return {
        "date": datetime.date.today().isoformat(),
        "machine": device_name(ids.device),
        "model": cfg.model.name,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "samples": args.samples,
        "batch_size": args.batch_size,
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.new_tokens,
        "variants": rows,
        "speedups": speedups,
        "command": " ".join(["python"] + sys.argv),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--variants", default="plain,hf,fast", help="comma-separated, from " + ",".join(VARIANTS))
    parser.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="device memory bandwidth in GB/s (CUDA; default from the device name)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default docs/bench/generate-<machine>.json)")
    parser.add_argument("overrides", nargs="*", help="whytune config overrides, e.g. model=qwen2.5-7b-instruct")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = validate(compose("ablate", overrides=["out=unused", *args.overrides]))
    device = pick_device(cfg.eval.device)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    model = load_model(cfg.model, location, device)
    ids = fit(
        encode_prompt(load_tokenizer(cfg.model, location), get_prompts([HEADLINE], cfg.eval.prompts_file)[0], device),
        args.prompt_tokens,
    )
    sizes = batches(args.samples, args.batch_size)
    variants = args.variants.split(",")
    if device.type == "cuda":  # one-off costs (cuBLAS set-up, kernel loading) stay out of the figures
        for variant in variants:
            VARIANTS[variant](model, ids, [2], 4)
    gbs = args.bandwidth_gbs or default_bandwidth(device)
    rows = {}
    for variant in variants:
        t = timed(variant, model, ids, sizes, args.new_tokens)
        share = None if gbs is None else bandwidth_share(model, variant, t, ids.shape[1], sizes, args.new_tokens, gbs)
        rows[variant] = figures(t, args.samples * args.new_tokens, share)
        show(variant, rows[variant])
    result = report(args, cfg, model, ids, rows)
    record(result, args.out, ROOT / "docs" / "bench", "generate", device_name(device))


if __name__ == "__main__":
    main(sys.argv[1:])
