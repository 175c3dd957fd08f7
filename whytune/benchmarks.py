"""What every benchmark in scripts/ shares: a device-synchronised clock, the record of every run, and the CPU's
vector-instruction flags and arithmetic bound, against which a CPU timing is read."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from whytune.runs import write_json


def now() -> float:
    """Wall time once the device has finished what was queued, so GPU timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def record(result: dict, out: Path | None, folder: Path, kind: str, device: str) -> None:
    """Append the run to `out`, or by default to `folder`/<kind>-<machine>.json, and say where. The file keeps
    every run (a JSON list), so figures quoted in BENCHMARKS.md stay traceable."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    path = out or folder / f"{kind}-{slug}.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    write_json(path, runs + [result])
    print(f"added to {path}")


def cpu_flags() -> list[str]:
    """The vector-instruction flags that decide CPU kernels' speed (AVX2, AVX-512, native bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def cpu_clock() -> tuple[float, str]:
    """The cores' clock in MHz and where it was read: the highest they may run at (cpufreq's cpuinfo_max_freq, what
    lscpu calls max MHz) where the kernel exposes it, else /proc/cpuinfo's `cpu MHz` (under a hypervisor, often the
    only one: its nominal clock, which a boosting core exceeds)."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1000, "cpufreq cpuinfo_max_freq (lscpu's max MHz)"
    except (OSError, ValueError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 0.0, "unknown"
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return (max(mhz), "/proc/cpuinfo cpu MHz") if mhz else (0.0, "unknown")


def flops_per_cycle(flags: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """One core's FLOPs per cycle by precision, from its vector-instruction flags, and the assumptions made. AVX2
    with FMA: 2 FMA units x 8 float32 lanes x 2 = 32; AVX-512: 64. bfloat16 (float16) runs at twice the float32 rate
    with avx512_bf16 (avx512_fp16), otherwise it is widened to float32 and runs at its rate."""
    have = set(flags)
    notes = []
    if "avx512f" in have:
        fp32 = 64
        notes.append("AVX-512: two 512-bit FMA units a core assumed (some Xeons have one; Zen 4 has 256-bit halves)")
    elif {"avx2", "fma"} <= have:
        fp32 = 32
    elif "avx" in have:
        fp32 = 16  # 8 lanes, one add and one multiply a cycle, no FMA
    else:
        fp32 = 8
    if have & {"amx_bf16", "amx_fp16", "amx_tile"}:
        notes.append("AMX present: its matrix units are not counted in the bound")
    per_cycle = {
        "float32": fp32,
        "bfloat16": 2 * fp32 if "avx512_bf16" in have else fp32,
        "float16": 2 * fp32 if "avx512_fp16" in have else fp32,
    }
    return per_cycle, notes


def arithmetic_bound(threads: int, flags: Iterable[str] | None = None, clock: tuple[float, str] | None = None) -> dict:
    """The cores' arithmetic bound by precision, threads x clock x FLOPs per cycle a core, with its derivation. Each
    thread is taken for a core of its own (with SMT two share one core's FMA units: give physical cores)."""
    mhz, source = clock or cpu_clock()
    per_cycle, notes = flops_per_cycle(cpu_flags() if flags is None else flags)
    return {
        "formula": "threads x clock x FLOPs per cycle a core",
        "threads": threads,
        "mhz": mhz,
        "clock_source": source,
        "flops_per_cycle": per_cycle,
        "gflops": {precision: threads * mhz * n / 1000 for precision, n in per_cycle.items()},
        "notes": notes,
    }


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one size^3 float32 torch matmul on torch's threads, the best of `repeats`: the practical ceiling
    beside the theoretical bound."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # the first call pays for the thread pool and the kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
