"""What every benchmark in scripts/ shares: a device-synchronised clock and the record of every run."""

from __future__ import annotations

import json
import re
import time
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
