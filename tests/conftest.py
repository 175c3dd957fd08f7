"""Shared fixtures: configs composed like the entry points do, and the tiny random model built offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.vllm_server import vllm_python, vllm_run, vllm_server  # noqa: F401  (real vLLM, for every test file)
from whytune.config import CONFIG_DIR, WhytuneConfig, validate
from whytune.models import model_dir

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def run_python(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` in a process of its own, as a user runs it, with one torch thread (tests that start processes
    share two cores) and its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def compose_config(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("ablate", overrides=list(overrides))


@pytest.fixture(scope="session", autouse=True)
def every_core():
    """`make test` sets OMP_NUM_THREADS=1 for the processes tests start (training ranks, Slurm jobs, commands), which
    share the cores; this process only waits while they run, so its own model work takes every core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache per test session: the tiny model is built once (about 2 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where real models are converted (minutes each on 2 cores): the user's model cache, which whytune-ablate uses
    too, kept across sessions. A converted folder is named by a hash of everything that shapes the conversion."""
    return Path(os.environ.get("WHYTUNE_CACHE") or Path.home() / ".cache" / "whytune")


@pytest.fixture
def smoke_cfg(tmp_path, cache_dir) -> WhytuneConfig:
    return validate(compose_config("experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}"))


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> str:
    cfg = validate(compose_config("experiment=smoke", "out=unused", f"cache_dir={cache_dir}"))
    return model_dir(cfg.model, cache_dir)
