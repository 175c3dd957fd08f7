"""Sampling speed, all in one run: plain batched `generate`, the project's backends and its peers, vLLM and
llama.cpp, on one long prompt, each with the base model and with a LoRA adapter active.

    python scripts/bench_generate.py [--samples 32] [--batch-size 32] [--prompt-tokens 2000] [--new-tokens 256]
        [--variants plain,hf,fast,vllm,llama.cpp-f32] [--adapter DIR] [--bandwidth-gbs N] [--out FILE] [overrides]

Variants: `plain` is `generate` on the whole prompt for every sample; `hf` prefills the prompt once and expands its
cache along the batch for `generate` (eval.backend=hf); `fast` is eval/fastgen.py (eval.backend=fast); `vllm` is
vLLM's offline engine (eval.backend=vllm) in float32 like the others, `vllm-bf16` the same in bfloat16, each with
prefix caching and LoRA enabled, its start-up not timed. vLLM runs only where it is installed: run the script with
.venv-vllm/bin/python (make vllm-env), which has this project too. `llama.cpp-f32`, `-f16` and `-bf16` are llama.cpp's
llama-batched-bench (make llama-cpp) on the model converted to GGUF in that float type, the adapter as a GGUF LoRA
(both converted before the timings); it shares the prompt's prefill across the sequences (-pps) and decodes each batch
together, but makes its own prompt, random tokens of the same length, and feeds random tokens rather than sampling:
the same shape, not the same text. All the others get the same prompt (the headline eval prompt, cut to
--prompt-tokens) and make exactly --new-tokens new tokens per sample (eos ignored), sampled at temperature 1; the
transformers variants and llama.cpp in the same batches, vLLM all at once (it schedules its own batches). Each
variant runs twice: on the base model and with a LoRA adapter active (`+lora`): --adapter's, or one with the config's
LoRA settings (train.lora) and random weights, whose cost is a trained one's. `prefill` is the prompt's first pass
(for vLLM: one request of one token, which also fills its prefix cache), `decode` the rest. Prints, and appends to
a JSON list (default docs/bench/), the seconds and new tokens/s of each, the ratios between variants (the project's
over the fastest peer in any precision among them). On CUDA also the share of the decode's memory-bandwidth bound
achieved; on CPU the decode's GFLOP/s (decode_flops) as a share of the cores' arithmetic bound in its precision
(whytune.benchmarks.arithmetic_bound, on torch's threads, which llama.cpp is given too; vLLM's CPU build binds its own)
and of one 2048^3 float32 torch matmul's measured rate. On CPU set MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=68719476736 (design notes, section 9), OMP_NUM_THREADS to the cores, and VLLM_CPU_KVCACHE_SPACE
(GiB) for vLLM. The full shape, every peer in every precision (BENCHMARKS.md's figures):

    make llama-cpp vllm-env
    OMP_NUM_THREADS=$(nproc) VLLM_CPU_KVCACHE_SPACE=8 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        .venv-vllm/bin/python scripts/bench_generate.py --samples 32 --batch-size 32 --prompt-tokens 2000 \
        --new-tokens 256 --variants fast,vllm,vllm-bf16,llama.cpp-f32,llama.cpp-f16,llama.cpp-bf16
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import platform
import resource
import subprocess
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
from huggingface_hub import snapshot_download
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from peft import get_peft_model
from transformers import LogitsProcessor, LogitsProcessorList

from whytune.benchmarks import arithmetic_bound, cpu_flags, matmul_gflops, now, record
from whytune.config import CONFIG_DIR, validate
from whytune.eval import fastgen
from whytune.eval.generate import ArmSwitcher, encode_prompt, prefill
from whytune.eval.prompts import HEADLINE, get_prompts
from whytune.eval.vllm_backend import VLLMSampler
from whytune.models import device_name, fingerprint, load_model, load_tokenizer, model_dir, pick_device
from whytune.runs import write_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = ROOT / ".llama.cpp"  # llama-batched-bench and llama.cpp's converters (make llama-cpp)
BANDWIDTH_GBS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100": 2000}  # by device name, first match


@dataclass
class Timing:
    prefill_s: float
    decode_s: float
    cpu_s: float  # CPU time of this process and its finished children (llama.cpp): shows how much of the wall
    # time other work on a shared machine took
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

    switcher: ArmSwitcher  # the transformers model with the adapter loaded beside it, switched as the eval does
    ids: torch.Tensor  # the prompt
    sizes: list[int]  # the batches
    new_tokens: int
    location: str  # the base model's folder (vLLM loads it itself)
    adapter: Path  # the adapter's folder
    lora: bool  # whether the adapter is active in this run
    scratch: Path  # a folder for the run's files (the adapter converted for llama.cpp)


@contextmanager
def active(setup: Setup) -> Iterator[Any]:
    """The model with the adapter in use as the eval uses an arm's (merged where it can be), or with none."""
    with setup.switcher.use(ADAPTER if setup.lora else None) as model:
        yield model


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


def llama_cpp_version() -> str | None:
    """llama-batched-bench's own `version: <build> (<commit>)` line, where make llama-cpp has built it."""
    if not (LLAMA_CPP / "llama-batched-bench").exists():
        return None
    result = subprocess.run([LLAMA_CPP / "llama-batched-bench", "--version"], capture_output=True, text=True)
    return next((line for line in (result.stdout + result.stderr).splitlines() if line.startswith("version")), None)


def convert(script: str, args: list[str], out: Path) -> None:
    """`out` written by one of llama.cpp's converters (with the gguf-py it ships), unless it is there already."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")
        command = [sys.executable, str(LLAMA_CPP / script), *args, "--outfile", str(part)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
        part.rename(out)


def llama_cpp_files(setup: Setup, outtype: str) -> tuple[Path, Path | None]:
    """The base model as a GGUF file in `outtype`, kept in .llama.cpp/models/ (a rebuild with another llama.cpp,
    whose converter may write it otherwise, clears it), and the adapter, where active, as a GGUF LoRA in `outtype`
    in the run's scratch folder; each converted on first use."""
    folder = Path(setup.location) if Path(setup.location).is_dir() else Path(snapshot_download(setup.location))
    model = LLAMA_CPP / "models" / f"{folder.name}-{outtype}.gguf"
    convert("convert_hf_to_gguf.py", [str(folder), "--outtype", outtype], model)
    if not setup.lora:
        return model, None
    lora = setup.scratch / f"{ADAPTER}-{outtype}.gguf"
    convert("convert_lora_to_gguf.py", [str(setup.adapter), "--base", str(folder), "--outtype", outtype], lora)
    return model, lora


def batched_bench_rows(output: str) -> dict[int, dict]:
    """llama-batched-bench's --output-format jsonl result rows by their number of parallel sequences (`pl`); T_PP is
    `t_pp`, S_PP `speed_pp`, T_TG `t_tg`, S_TG `speed_tg`, in seconds and tokens/s."""
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {row["pl"]: row for row in rows}


def llama_cpp_command(
    model: Path, lora: Path | None, prompt: int, new_tokens: int, sizes: list[int], threads: int
) -> list[str]:
    """One llama-batched-bench run for every batch size: each sequence with its own slice of the KV cache (a shared
    prompt is copied into each), prefilled once (-pps), all of a batch's sequences decoded together."""
    widest = max(sizes)
    return [
        str(LLAMA_CPP / "llama-batched-bench"),
        *("-m", str(model)),
        *(("--lora", str(lora)) if lora else ()),
        *("-c", str(widest * (prompt + new_tokens))),
        *("-b", str(max(prompt, widest)), "-ub", "512"),
        *("-npp", str(prompt), "-ntg", str(new_tokens), "-npl", ",".join(map(str, sorted(set(sizes)))), "-pps"),
        *("-t", str(threads), "-tb", str(threads)),
        *("--output-format", "jsonl"),
    ]


def run_llama_cpp(setup: Setup, outtype: str = "f32") -> tuple[float, float]:
    """llama.cpp's llama-batched-bench (make llama-cpp) on the model converted to GGUF in `outtype`, the adapter
    too: its prompt is random tokens of the same length, its new tokens are drawn at random (not sampled from the
    logits). The prompt's prefill is counted once, as the other variants prefill it once."""
    model, lora = llama_cpp_files(setup, outtype)
    command = llama_cpp_command(model, lora, setup.ids.shape[1], setup.new_tokens, setup.sizes, torch.get_num_threads())
    print(" llama.cpp: " + " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    rows = batched_bench_rows(result.stdout)
    if result.returncode != 0 or not set(setup.sizes) <= rows.keys():
        raise RuntimeError(f"llama-batched-bench failed or left rows out:\n{result.stdout}{result.stderr[-4000:]}")
    return rows[setup.sizes[0]]["t_pp"], sum(rows[n]["t_tg"] for n in setup.sizes)


LLAMA_CPP_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}  # GGUF float types, as torch names them
VARIANTS: dict[str, Callable[[Setup], tuple[float, float]]] = {
    "plain": run_plain,
    "hf": run_hf,
    "fast": run_fast,
    "vllm": run_vllm,
    "vllm-bf16": functools.partial(run_vllm, dtype="bfloat16"),
    **{f"llama.cpp-{t}": functools.partial(run_llama_cpp, outtype=t) for t in LLAMA_CPP_TYPES},
}
PRECISIONS = {"vllm": "float32", "vllm-bf16": "bfloat16"} | {f"llama.cpp-{t}": p for t, p in LLAMA_CPP_TYPES.items()}


def precision(variant: str, model) -> str:
    """The float type a variant computes in: the transformers variants in the model's."""
    return PRECISIONS.get(variant, str(next(model.parameters()).dtype).removeprefix("torch."))


def cpu_time() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(variant: str, setup: Setup) -> Timing:
    load, cpu = os.getloadavg()[0], cpu_time()
    prefill_s, decode_s = VARIANTS[variant](setup)
    return Timing(prefill_s, decode_s, cpu_time() - cpu, load, os.getloadavg()[0])


def bench_adapter(cfg, model, location: str, given: Path | None, folder: Path) -> Path:
    """The adapter timed with the base model: the given trained one, or the config's LoRA with random weights (B
    not zero, as after training), saved into `folder` with the manifest naming its base that the eval checks."""
    if given is not None:
        return given
    lora = instantiate(asdict(cfg.train.lora), init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    write_json(folder / "manifest.json", {"base_model": cfg.model.name, "base_fingerprint": fingerprint(location)})
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


def matmul_weights(config) -> int:
    """The weights one token goes through in matmuls: attention's four projections and the MLP's three in every
    layer, and the lm head (the embedding is a lookup)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    queries, keys = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layer = config.hidden_size * (2 * queries + 2 * keys) + 3 * config.hidden_size * config.intermediate_size
    return config.num_hidden_layers * layer + config.hidden_size * config.vocab_size


def decode_flops(config, prompt: int, new_tokens: int, samples: int, adapter_weights: int = 0) -> int:
    """The decode's arithmetic: for every new token of every sample, 2 FLOPs a weight in matmuls (the adapter's
    too) and attention's 2 x 2 x layers x heads x head_dim a key attended (scores, then the weighted values); step i
    attends the prompt and the i + 1 tokens decoded by then."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    keys = new_tokens * prompt + new_tokens * (new_tokens + 1) // 2
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * keys
    return samples * (2 * new_tokens * (matmul_weights(config) + adapter_weights) + attention)


def dtype_size(model) -> int:
    """Bytes per weight, and per cached key or value (the cache takes the model's dtype)."""
    return next(model.parameters()).element_size()


def default_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbs for key, gbs in BANDWIDTH_GBS.items() if key in name), None)


def arithmetic(bound: dict, precision: str, flops: int, decode_s: float) -> dict:
    """The decode's GFLOP/s and its share of the cores' arithmetic bound in its precision and of the measured float32
    matmul's rate."""
    gflops = flops / decode_s / 1e9
    return {
        "precision": precision,
        "decode_gflops": gflops,
        "arithmetic_bound_share": gflops / bound["gflops"][precision],
        "matmul_share": gflops / bound["matmul_gflops"],
    }


def figures(t: Timing, new_tokens: int, share: float | None, compute: dict | None) -> dict:
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
    return row | (compute or {})


def show(variant: str, row: dict) -> None:
    share, bound = row.get("bandwidth_bound_share"), row.get("arithmetic_bound_share")
    print(
        f"{variant:>19}: prefill {row['prefill_s']:8.1f} s  decode {row['decode_s']:8.1f} s  "
        f"{row['new_tokens_per_s']:9.1f} new tokens/s ({row['decode_tokens_per_s']:.1f} in decode)  "
        f"cpu {row['cpu_s']:.0f} s  load {row['load_before']:.1f}->{row['load_after']:.1f}"
        + ("" if share is None else f"  {100 * share:.1f}% of the bandwidth bound")
        + (
            ""
            if bound is None
            else f"  {row['decode_gflops']:.1f} GFLOP/s: {100 * bound:.1f}% of the {row['precision']} bound, "
            f"{100 * row['matmul_share']:.1f}% of the matmul's"
        ),
        flush=True,
    )


def best_peers(rows: dict[str, dict]) -> dict[str, str]:
    """The fastest of vLLM and llama.cpp in any precision (by total time), without the adapter ("") and with it."""
    out = {}
    for lora in ("", "+lora"):
        peers = [peer + lora for peer in PRECISIONS if peer + lora in rows]
        if peers:
            out[lora] = min(peers, key=lambda peer: rows[peer]["total_s"])
    return out


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    """Each variant's speed-up over plain (with and without the adapter alike), over vLLM in float32, the project's
    over the fastest peer (best_peers), and with the adapter over itself without one (1.0: the adapter costs
    nothing)."""
    out, best = {}, best_peers(rows)
    for name, row in rows.items():
        base, lora = name.removesuffix("+lora"), "+lora" * name.endswith("+lora")
        for reference in ("plain", "vllm"):
            other = rows.get(reference + lora)
            if other is not None and base != reference:
                out[f"{name}_vs_{reference}{lora}"] = other["total_s"] / row["total_s"]
        if base not in PRECISIONS and lora in best:
            out[f"{name}_vs_best_peer{lora}"] = rows[best[lora]]["total_s"] / row["total_s"]
        if lora and base in rows:
            out[f"{base}_adapter_cost"] = row["total_s"] / rows[base]["total_s"]
    return out


def report(args, cfg, model, ids, rows: dict[str, dict], adapter: Path | None, bound: dict | None) -> dict:
    """The ratios between variants, printed; everything as a JSON-ready dict."""
    speedups, best = ratios(rows), best_peers(rows)
    for name, ratio in speedups.items():
        print(f"{name}: {ratio:.2f}x")
    if best:
        print("best peer: " + ", ".join(best.values()))
    return {
        "date": datetime.date.today().isoformat(),
        "machine": device_name(ids.device),
        "model": cfg.model.name,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": _version("vllm-cpu") or _version("vllm"),
        "llama.cpp": llama_cpp_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "arithmetic_bound": bound,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "prompt_tokens": ids.shape[1],
        "new_tokens": args.new_tokens,
        "adapter": str(adapter) if adapter else f"random weights, r={cfg.train.lora.r} {cfg.train.lora.target_modules}",
        "variants": rows,
        "speedups": speedups,
        "best_peers": list(best.values()),
        "command": " ".join(["python"] + sys.argv),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_bound() -> dict:
    """The cores' arithmetic bound on torch's threads (which every variant is given) and the rate of one large float32
    matmul, printed; both as a JSON-ready dict."""
    bound = arithmetic_bound(torch.get_num_threads()) | {"matmul_gflops": matmul_gflops()}
    per_cycle = ", ".join(f"{n} {p}" for p, n in bound["flops_per_cycle"].items())
    print(
        f"arithmetic bound: {bound['threads']} threads x {bound['mhz']:.0f} MHz ({bound['clock_source']}) x FLOPs a "
        f"cycle ({per_cycle}) = {bound['gflops']['float32']:.1f} GFLOP/s float32; a 2048^3 float32 matmul: "
        f"{bound['matmul_gflops']:.1f} GFLOP/s" + "".join(f"; {note}" for note in bound["notes"]),
        flush=True,
    )
    return bound


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
        adapter = bench_adapter(
            cfg, load_model(cfg.model, location, device), location, args.adapter, Path(scratch) / ADAPTER
        )
        switcher = ArmSwitcher(
            load_model(cfg.model, location, device), cfg.model.name, fingerprint(location), {ADAPTER: adapter}
        )
        model = switcher.model
        sizes = batches(args.samples, args.batch_size)
        runs = [(v, lora) for v in args.variants.split(",") for lora in (False, True)]
        setups = {
            lora: Setup(switcher, ids, sizes, args.new_tokens, location, adapter, lora, Path(scratch))
            for lora in (False, True)
        }
        for variant, lora in runs:  # converted before the timings
            if variant.startswith("llama.cpp-"):
                llama_cpp_files(setups[lora], variant.removeprefix("llama.cpp-"))
        if device.type == "cuda":  # one-off costs (cuBLAS set-up, kernel loading) stay out of the figures
            for variant, lora in runs:
                VARIANTS[variant](Setup(switcher, ids, [2], 4, location, adapter, lora, Path(scratch)))
        gbs = args.bandwidth_gbs or default_bandwidth(device)
        bound = cpu_bound() if device.type == "cpu" else None
        config = model.config.get_text_config()
        adapter_weights = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
        rows = {}
        for variant, lora in runs:
            name = variant + "+lora" * lora
            t = timed(variant, setups[lora])
            share = None
            if gbs is not None and variant not in PRECISIONS:  # not for the peers, vLLM and llama.cpp
                share = bandwidth_share(model, variant, t, ids.shape[1], sizes, args.new_tokens, gbs)
            flops = decode_flops(config, ids.shape[1], args.new_tokens, args.samples, adapter_weights * lora)
            compute = None if bound is None else arithmetic(bound, precision(variant, model), flops, t.decode_s)
            rows[name] = figures(t, args.samples * args.new_tokens, share, compute)
            show(name, rows[name])
        result = report(args, cfg, model, ids, rows, adapter if args.adapter else None, bound)
    record(result, args.out, ROOT / "docs" / "bench", "generate", device_name(device))


if __name__ == "__main__":
    main(sys.argv[1:])
