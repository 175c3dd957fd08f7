"""The train stage under a real two-process launch (DDP over gloo on CPU): every rank trains, one writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from tests.conftest import compose_config, run_python
from whytune.config import CONFIG_DIR, validate
from whytune.data.build import build
from whytune.runs import RunPaths

ROOT = Path(__file__).resolve().parents[1]


def test_two_ranks_write_one_adapter_one_manifest_and_one_hydra_folder(tmp_path, cache_dir, tiny_dir):
    overrides = ["experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}", "arms=[demos]", "seeds=[0]"]
    cfg = validate(compose_config(*overrides))
    build(cfg)
    # The repository's DDP file with two processes; the train stage sets use_cpu where there is no GPU, which is
    # what makes accelerate start two gloo ranks on a CPU (its --cpu flag would start one).
    launch = two_ranks("configs/accelerate/multi_gpu.yaml", overrides)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    seed_dir = RunPaths.of(cfg).seed_dir("demos", 0)
    assert [p.relative_to(seed_dir) for p in seed_dir.rglob("manifest.json")] == [Path("adapter/manifest.json")]
    assert len(list(seed_dir.rglob("adapter_model.safetensors"))) == 1
    assert json.loads((seed_dir / "adapter" / "manifest.json").read_text())["world_size"] == 2
    assert not (seed_dir / "checkpoints").exists()
    assert len(list((tmp_path / "run" / "hydra").iterdir())) == 1  # both ranks resolved one run folder


def test_two_ranks_with_a_fresh_model_cache_build_the_model_once(tmp_path):
    """No model folder yet, and a GPU-only accelerate file (FSDP2): on CPU the ranks still start distributed, so
    rank 0 builds the model while the other waits (they once both built it, and the second rank's copy had no
    weights: transformers writes weights on rank 0 only)."""
    overrides = [
        "experiment=smoke",
        f"out={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'cache'}",
        "arms=[demos]",
        "seeds=[0]",
    ]
    build(validate(compose_config(*overrides)))
    launch = two_ranks("configs/accelerate/fsdp2.yaml", overrides)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    (model,) = (tmp_path / "cache" / "models").glob("tiny-random-*")
    assert (model / "model.safetensors").exists()
    manifest = tmp_path / "run" / "tiny-random" / "demos" / "seed0" / "adapter" / "manifest.json"
    assert json.loads(manifest.read_text())["world_size"] == 2


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("single_gpu", "NO"),
        ("multi_gpu", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("deepspeed_zero3", "DEEPSPEED"),
    ],
)
def test_accelerate_configs_load_and_leave_precision_to_the_train_config(name, kind):
    config = load_config_from_file(str(CONFIG_DIR / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind
    assert config.mixed_precision in ("no", None)  # train.bf16 decides, through the Trainer's arguments
    if kind == "DEEPSPEED":
        ds = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # the adapter can be saved
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        # Checkpoints in shards, the adapter gathered alone (train/sft.py save_adapter); rank 0 alone loads weights.
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] and config.fsdp_config["fsdp_sync_module_states"]


def two_ranks(config_file: str, overrides: list[str]):
    """The train stage under `accelerate launch` with two processes."""
    launch = ["-m", "accelerate.commands.launch", "--config_file", config_file, "--num_processes", "2"]
    return run_python(*launch, "--main_process_port", "0", "-m", "whytune.train.sft", *overrides, timeout=180)
