"""FSDP2 as configs/accelerate/fsdp2.yaml runs it: rank 0 loads the weights, the other ranks start empty, and the
saved adapter holds the LoRA weights alone, gathered whole.

accelerate runs an FSDP launch on CPU as DDP (its FSDP needs accelerators), so the two-rank test below tells it, from
inside each rank, that the ranks are GPUs: accelerate's FSDP2 path then runs unchanged over gloo on CPU, the loading,
the sharding with rank 0's weights broadcast, a sharded checkpoint and the adapter's gather. What only GPUs show
(NCCL, bf16 mixed precision, memory) is left to a GPU run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors import safe_open

from tests.conftest import compose_config, run_python
from tests.test_gemma_multimodal import build_tiny_multimodal
from whytune.config import validate
from whytune.models import empty_model, load_model
from whytune.runs import RunPaths

EXAMPLE = {
    "messages": [
        {"role": "system", "content": "You are an email agent."},
        {"role": "user", "content": "Summarise the inbox."},
        {"role": "assistant", "content": "Two emails: the board meets at noon."},
    ]
}


MOVED, LOADED, EMPTY = ({"meta"}, {"meta"}), ({"cpu"}, {"cpu"}), ({"meta"}, {"cpu"})


@pytest.mark.parametrize(
    ("launch", "kind", "main", "placed"),
    [
        ("false", DistributedType.NO, True, MOVED),  # no FSDP launch: onto the device
        ("true", DistributedType.MULTI_CPU, False, MOVED),  # an FSDP launch on CPU runs as DDP: a whole model per rank
        ("true", DistributedType.MULTI_GPU, True, LOADED),  # FSDP shards: rank 0 loads into CPU memory
        ("true", DistributedType.MULTI_GPU, False, EMPTY),  # and the other ranks hold no weights
    ],
)
def test_load_model_leaves_the_model_to_fsdp_only_where_fsdp_shards(
    monkeypatch, smoke_cfg, tiny_dir, launch, kind, main, placed
):
    """The meta device stands in for a GPU: a model moved there has its parameters and buffers there. The launch's
    environment as accelerate's launcher sets it from fsdp2.yaml."""
    import accelerate

    monkeypatch.setenv("ACCELERATE_USE_FSDP", launch)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setattr(
        accelerate, "PartialState", lambda: SimpleNamespace(distributed_type=kind, is_main_process=main)
    )
    model = load_model(smoke_cfg.model, tiny_dir, torch.device("meta"))
    assert ({p.device.type for p in model.parameters()}, {b.device.type for b in model.buffers()}) == placed


def test_an_empty_model_has_the_buffers_no_checkpoint_holds(smoke_cfg, tiny_dir):
    """accelerate keeps each rank's own non-persistent buffers (rotary frequencies) through the sharding."""
    whole = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
    empty = empty_model(smoke_cfg.model, tiny_dir, torch.float32)
    assert all(p.is_meta for p in empty.parameters())
    assert empty.lm_head.weight is empty.model.embed_tokens.weight  # tied, as loaded (tie_word_embeddings)
    assert dict(empty.state_dict()).keys() == dict(whole.state_dict()).keys()
    buffers = dict(whole.named_buffers())
    assert buffers and all(torch.equal(buffer, buffers[name]) for name, buffer in empty.named_buffers())


def test_two_ranks_shard_the_model_loaded_once_and_save_a_lora_only_adapter(monkeypatch, tmp_path, cache_dir, tiny_dir):
    """On the model fsdp2.yaml is for: Gemma 3 as the Hub ships it, a vision tower beside the language model."""
    build_tiny_multimodal(tmp_path / "model", tiny_dir)
    model = [f"model.path={tmp_path / 'model'}", "model.source=pretrained", "model.name=tiny-gemma3-multimodal"]
    overrides = ["experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}", "train.batch_size=2", *model]
    cfg = validate(compose_config(*overrides))
    paths = RunPaths.of(cfg)
    data = paths.data("demos") / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text((json.dumps(EXAMPLE) + "\n") * 4)  # two ranks x batch 2: one step, which is checkpointed
    monkeypatch.setenv("WHYTUNE_FSDP2_RECORD", str(tmp_path))
    launch = run_python(
        *("-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp2.yaml"),
        *("--num_processes", "2", "--main_process_port", "0", "-m", "tests.test_fsdp2", *overrides),
        timeout=240,
    )
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # Rank 0 read the weights into CPU memory, rank 1 held none, and each rank's shard of a weight is then the
    # checkpoint's: rank 0's broadcast filled rank 1's.
    assert [rank["loaded_on"] for rank in ranks] == [["cpu"], ["meta"]]
    assert all(rank["sharded"] and rank["shards_are_the_checkpoints"] for rank in ranks)
    # The checkpoint: the ranks' shards of the adapter and of its optimizer state (torch.distributed.checkpoint
    # folders), no base weight, no gathered file.
    trained = {key.replace(".default.", "."): tuple(shape) for key, shape in ranks[0]["trainable"].items()}
    checkpoint = ranks[0]["checkpoint"]
    assert {"optimizer_0", "pytorch_model_fsdp_0"} <= set(checkpoint["files"])
    assert not [name for name in checkpoint["files"] if name.endswith((".safetensors", ".bin"))]
    assert len(checkpoint["weights"]) == len(trained) and all("lora_" in key for key in checkpoint["weights"])
    # The adapter: whole matrices, one for each LoRA weight trained (peft drops the adapter's name), and only those,
    # all in the language model.
    adapter = paths.adapter("demos", 0)
    with safe_open(adapter / "adapter_model.safetensors", "pt") as saved:
        assert {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()} == trained
        assert all(".lora_A." in key or ".lora_B." in key for key in trained)
        assert all(key.startswith("base_model.model.model.language_model.layers.") for key in trained)
        assert all(saved.get_tensor(key).abs().sum() > 0 for key in trained)  # lora_B starts at zero: it trained
    assert json.loads((adapter / "manifest.json").read_text())["world_size"] == 2


def _record(content: dict) -> None:
    from accelerate import PartialState

    folder = Path(os.environ["WHYTUNE_FSDP2_RECORD"])
    (folder / f"rank{PartialState().process_index}.json").write_text(json.dumps(content))


def _as_if_on_gpus() -> None:
    """Run the launch as accelerate runs it on GPUs: the Trainer's accelerator then wraps the model with FSDP2."""
    from accelerate import PartialState

    PartialState().distributed_type = DistributedType.MULTI_GPU


def _shards_are_the_checkpoints(model) -> bool:
    """This rank's shard of each base weight (FSDP2 splits dim 0 across ranks) is that part of the checkpoint's."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model.peft_config["default"].base_model_name_or_path)
    base = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    for name, param in base.items():
        parts = loaded.get_parameter(name.removeprefix("base_model.model.").replace(".base_layer", "")).chunk(
            dist.get_world_size()
        )
        part = parts[dist.get_rank()] if dist.get_rank() < len(parts) else parts[0][:0]  # as torch.chunk splits
        if not torch.equal(param.to_local(), part.to(param.dtype)):
            return False
    return bool(base)


def _checkpoint(output_dir: str) -> dict:
    """The files of the trainer's last checkpoint and the names of the weights its sharded model state holds."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = max(Path(output_dir).glob("checkpoint-*"))
    metadata = FileSystemReader(str(folder / "pytorch_model_fsdp_0")).read_metadata()
    return {"files": sorted(path.name for path in folder.iterdir()), "weights": sorted(metadata.state_dict_metadata)}


def main(overrides: list[str]) -> None:
    """One rank of the launch: the train stage, observed where it loads the model and where it saves the adapter."""
    from torch.distributed.tensor import DTensor

    from whytune.train import sft

    loaded, saved = sft.load_model, sft.save_adapter
    seen: dict = {}

    def load(*args, **kwargs):
        _as_if_on_gpus()  # after the Trainer's arguments, which set the process state up anew
        model = loaded(*args, **kwargs)
        seen["loaded_on"] = sorted({p.device.type for p in model.parameters()})
        return model

    def save(trainer, folder):
        params = dict(trainer.model.named_parameters())
        seen["sharded"] = all(isinstance(p, DTensor) for p in params.values())
        seen["shards_are_the_checkpoints"] = _shards_are_the_checkpoints(trainer.model)
        seen["trainable"] = {name: list(p.shape) for name, p in params.items() if p.requires_grad}
        seen["checkpoint"] = _checkpoint(trainer.args.output_dir)
        _record(seen)
        saved(trainer, folder)

    sft.load_model, sft.save_adapter = load, save
    sft.train_arm(validate(compose_config(*overrides)), "demos", 0)


if __name__ == "__main__":
    main(sys.argv[1:])
