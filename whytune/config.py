"""Typed schema for every Hydra config, so a mistyped key or a wrong type fails at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ModelSource(Enum):
    """Where a model's weights come from."""

    pretrained = "pretrained"  # a Hub id or a local Hugging Face folder
    gguf_package = "gguf_package"  # a GGUF file shipped inside an installed Python package
    tiny_random = "tiny_random"  # built here from a config, random weights (tests, smoke runs)


@dataclass
class ModelConfig:
    name: str = MISSING  # short id used in run paths
    source: ModelSource = ModelSource.pretrained
    path: str = ""  # pretrained: Hub id or local folder
    revision: Optional[str] = None  # pretrained: Hub revision to pin
    package: str = ""  # gguf_package: the installed package that ships the file
    file: str = ""  # gguf_package: file name inside that package
    dtype: str = "auto"  # torch dtype for loading: auto, float32, bfloat16
    # A chat template with {% generation %} markers (file in whytune/templates/), for models whose own
    # template lacks them and that TRL cannot patch; null keeps the tokenizer's template.
    train_chat_template: Optional[str] = None
    trust_remote_code: bool = False
    # tiny_random only: the architecture of the random model.
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512


@dataclass
class ArmConfig:
    name: str = MISSING
    description: str = ""
    # Response style written by data.writers (demos, demos_principles, rules); null trains nothing.
    writer: Optional[str] = None


@dataclass
class DataConfig:
    examples: int = 2000  # training examples per trained arm
    seed: int = 0  # scenario generator seed (shared by all arms: matched prompts)
    contamination_ngram: int = 13  # fail the build if a training example shares this many words with an eval prompt


@dataclass
class LoraSchema:
    _target_: str = "peft.LoraConfig"
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"
    task_type: str = "CAUSAL_LM"


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: float = 0.0  # linear warm-up: a fraction (< 1) of the training steps, or a number of steps
    max_length: int = 2048
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 50  # checkpoint interval: an interrupted run resumes from the last one
    report_to: str = "none"  # "wandb" to log curves
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class EvalConfig:
    conditions: list[str] = field(default_factory=lambda: ["headline"])  # presets, ids or globs (eval/prompts.py)
    # Benign controls (no threat, no goal conflict): does the agent still do its email work? Reported per arm.
    capability_conditions: list[str] = field(default_factory=lambda: ["blackmail_none-none_none"])
    samples: int = 100  # per arm, seed and condition
    batch_size: int = 16
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass
class WhytuneConfig:
    name: str = MISSING  # experiment name
    out: str = MISSING  # run folder
    seeds: list[int] = field(default_factory=lambda: [0])
    cache_dir: str = "${oc.env:WHYTUNE_CACHE,${oc.env:HOME}/.cache/whytune}"  # converted models
    model: ModelConfig = field(default_factory=ModelConfig)
    arms: list[str] = field(default_factory=lambda: ["baseline", "demos", "demos_principles"])  # files in configs/arm/
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The judge behind the classifiers, built with hydra.utils.instantiate (configs/judge/).
    judge: dict[str, Any] = field(default_factory=lambda: {"_target_": "eval.classifiers.HeuristicJudge"})


ConfigStore.instance().store(name="whytune_schema", node=WhytuneConfig)


def validate(cfg: DictConfig) -> WhytuneConfig:
    """Merge the composed config into the schema: unknown keys and wrong types raise here, at start-up."""
    merged = OmegaConf.merge(OmegaConf.structured(WhytuneConfig), cfg)
    OmegaConf.resolve(merged)
    typed: WhytuneConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not typed.arms:
        raise ValueError(f"no arm selected: choose some with arms=[...] from {arm_choices()}")
    for name in typed.arms:
        load_arm(name)
    _check_target(typed.judge, "judge")
    if typed.eval.samples < 1 or typed.eval.batch_size < 1:
        raise ValueError("eval.samples and eval.batch_size must be at least 1")
    return typed


def _check_target(node: dict, key: str) -> None:
    """Fail at start-up, not after hours of sampling, when a component's class cannot be imported."""
    from hydra.utils import get_class

    if "_target_" not in node:
        raise ValueError(f"{key} needs a _target_ (see configs/{key}/)")
    try:
        get_class(node["_target_"])
    except Exception as error:
        raise ValueError(f"{key}._target_={node['_target_']!r} cannot be imported: {error}") from None


def arm_choices() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "arm").glob("*.yaml"))


def load_arm(name: str) -> ArmConfig:
    """An arm is one YAML file in configs/arm/; adding an arm is adding a file."""
    path = CONFIG_DIR / "arm" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown arm {name!r}; choices: {', '.join(arm_choices())}")
    arm: ArmConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ArmConfig), OmegaConf.load(path)))
    if arm.name != name:
        raise ValueError(f"{path} names itself {arm.name!r}; the file name and `name` must agree")
    if arm.writer is not None:
        from data.writers import STYLES

        if arm.writer not in STYLES:
            raise ValueError(f"{path}: writer {arm.writer!r} is not one of {', '.join(STYLES)}")
    return arm
