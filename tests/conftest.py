"""Shared fixtures: configs composed like the entry points do, and the tiny random model built offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache per test session: the tiny model is built once (about 2 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def smoke_cfg(tmp_path, cache_dir) -> WhytuneConfig:
    return validate(compose_config("experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}"))


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> str:
    cfg = validate(compose_config("experiment=smoke", "out=unused", f"cache_dir={cache_dir}"))
    return model_dir(cfg.model, cache_dir)
