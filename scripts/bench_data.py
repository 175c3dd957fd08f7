"""Time a default-size data build (data.examples at its schema default, every arm) into a temporary folder.

Usage: python scripts/bench_data.py [hydra overrides, e.g. data.length_match=true arms=[demos,demos_principles]]
Prints the seconds taken and, per arm, the examples and reply lengths built.
"""

from __future__ import annotations

import sys
import tempfile
import time

from hydra import compose, initialize_config_dir

from whytune.config import CONFIG_DIR, DataConfig, arm_choices, validate
from whytune.data.build import build
from whytune.data.lengths import WORDS, measure


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as out:
        defaults = [f"out={out}", f"data.examples={DataConfig().examples}", f"arms=[{','.join(arm_choices())}]"]
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = validate(compose("ablate", overrides=defaults + overrides))
        start = time.perf_counter()
        built = build(cfg)
        seconds = time.perf_counter() - start
    print(f"data build: {seconds:.1f} s for data.examples={cfg.data.examples}")
    for arm, rows in built.items():
        lengths = measure(rows, WORDS)
        print(f"  {arm:<18} {lengths.examples:>6} examples  {lengths.reply:>9,} reply words")


if __name__ == "__main__":
    main(sys.argv[1:])
