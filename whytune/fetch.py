"""Put the config's model where jobs without internet find it: run on a login node, before the jobs.

    whytune-fetch model=qwen2.5-7b-instruct          # the same overrides as whytune-ablate
    whytune-fetch experiment=paper
    HF_HUB_OFFLINE=1 whytune-ablate experiment=paper  # then on the compute nodes, as it says

A Hub model (model.path a Hub id) is downloaded at model.revision into the user's Hugging Face cache (HF_HUB_CACHE,
else HF_HOME/hub), its config, tokenizer and weight files only; with HF_HUB_OFFLINE=1 the jobs read it from there and
never ask the Hub. A local folder (model.path a path) is checked. Either way the folder must hold a config, a tokenizer
and every weights file, and the tokenizer must load as training loads it. A GGUF package's model is converted, or the
tiny random model built, into whytune's own cache (cache_dir) as a run would; a run with that cache_dir finds it.
One model per call: run it once per model=... of a sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from huggingface_hub import snapshot_download
from omegaconf import DictConfig

from whytune.config import CONFIG_PATH, ModelConfig, ModelSource, WhytuneConfig, validate
from whytune.models import load_tokenizer, model_dir

# What from_pretrained reads of a causal LM and its tokenizer, in every family's layout: configs and JSON tokenizers
# (config.json, tokenizer.json, tokenizer_config.json, vocab.json, the weights' index), BPE merges (merges.txt),
# SentencePiece models (tokenizer.model), tiktoken ranks, chat templates, and the weights as safetensors.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.safetensors"]
# Copies of the weights in layouts transformers never reads: Mistral's consolidated.safetensors, as large as the model
# itself, and Meta's original/ folder.
IGNORE_PATTERNS = ["consolidated*", "original/*"]
# What a run loads from a model folder, each as file name patterns of which one must be there.
REQUIRED = {
    "config.json": ("config.json",),
    "a tokenizer (tokenizer.json, tokenizer.model or vocab.json)": ("tokenizer.json", "tokenizer.model", "vocab.json"),
    "weights (*.safetensors or pytorch_model*.bin)": ("*.safetensors", "pytorch_model*.bin"),
}
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Fetched:
    """Where a model now is, and what the jobs' environment must set to find it there."""

    model: str  # the model's name (model.name)
    folder: Path  # the model folder itself
    how: str  # what was done, for the user
    env: dict[str, str] = field(default_factory=dict)  # variables the jobs need, with their values

    def message(self) -> str:
        lines = [f"[fetch] {self.model}: {self.how}", f"  in {self.folder}"]
        if self.env:
            lines.append("Run the jobs with: export " + " ".join(f"{k}={v}" for k, v in self.env.items()))
        else:
            lines.append("The jobs find it there with nothing to set; the folder must be on a file system they see.")
        return "\n".join(lines)


def fetch(cfg: WhytuneConfig) -> Fetched:
    """Download, check or build cfg's model, as its source says."""
    model = cfg.model
    # As a run finds it: converted or built into cache_dir, where every run looks; else a local folder or a Hub id.
    location = model_dir(model, Path(cfg.cache_dir))
    if model.source is not ModelSource.pretrained:
        what = "converted from its GGUF file" if model.source is ModelSource.gguf_package else "built"
        how = f"{what} into whytune's cache (now, or by an earlier call or run)"
        return Fetched(model.name, Path(location), how, {"WHYTUNE_CACHE": cfg.cache_dir})
    if Path(location).is_dir():
        check_folder(model, Path(location))
        return Fetched(model.name, Path(location), "a local folder, checked: config, tokenizer and weights present")
    snapshot = download(model)
    check_folder(model, snapshot)
    revision = model.revision or "main"
    return Fetched(
        model.name,
        snapshot,
        f"{model.path} at {revision} in the Hugging Face cache",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(snapshot.parents[2])},  # <cache>/models--org--name/snapshots/<sha>
    )


def download(model: ModelConfig) -> Path:
    """model.path at model.revision into the Hugging Face cache: its snapshot folder there. Files already cached are
    not fetched again; a gated model needs its licence accepted on the Hub and `hf auth login` first."""
    patterns = ALLOW_PATTERNS + (["*.py"] if model.trust_remote_code else [])  # the model's own code
    folder = snapshot_download(
        model.path, revision=model.revision, allow_patterns=patterns, ignore_patterns=IGNORE_PATTERNS
    )
    return Path(folder)


def check_folder(model: ModelConfig, folder: Path) -> None:
    """Raise unless `folder` holds what a run loads: a config, a tokenizer, every weights file its index names; and
    the tokenizer loads as training loads it (its chat template, its eos token)."""
    missing = [what for what, names in REQUIRED.items() if not any(any(folder.glob(name)) for name in names)]
    for index in WEIGHT_INDEXES:
        if (folder / index).exists():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing += [shard for shard in shards if not (folder / shard).exists()]
    if missing:
        raise FileNotFoundError(f"model {model.name!r}: {folder} lacks {', '.join(missing)}")
    load_tokenizer(model, str(folder))


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    print(fetch(validate(raw)).message())


if __name__ == "__main__":
    main()
