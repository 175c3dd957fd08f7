"""The transformers side of sampling (the fast and hf backends of eval/backends.py) and the sample store.

The base model is loaded once; each arm's LoRA adapter is loaded beside the others and merged into the base weights
while its arm is sampled (the baseline runs with adapters disabled). All samples of a condition share one prompt, so
its prefix is prefilled once per arm. The fast backend (eval/fastgen.py) then reads that prefix once per step for the
whole batch; the hf backend expands its key/value cache along the batch for transformers' `generate`.
"""

from __future__ import annotations

import copy
import json
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from whytune.config import EvalConfig
from whytune.eval import fastgen
from whytune.eval.prompts import EvalPrompt
from whytune.runs import claim, read_jsonl


class AdapterMismatchError(ValueError):
    """An adapter was trained for another base model than the one loaded."""


@dataclass(frozen=True)
class Sampling:
    samples: int
    batch_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    backend: str = "fast"  # "fast" (eval/fastgen.py, where the architecture allows) or "hf" (transformers' generate)

    @classmethod
    def of(cls, settings: EvalConfig) -> Sampling:
        """The sampling settings of an eval config: the one place they are read from it."""
        return cls(
            settings.samples,
            settings.batch_size,
            settings.max_new_tokens,
            settings.temperature,
            settings.top_p,
            settings.backend.value,
        )


class ArmSwitcher:
    """One base model, many adapters: `with switcher.use(name)` runs one (None = the base model).

    While an arm is used its LoRA is merged into the base weights, so a step costs what the base model's does (an
    active, unmerged LoRA adds two small matmuls to every targeted layer: steps 6-18% slower on CPU). Leaving, the
    weights are copied back in place from a backup, bit for bit, even if the body raised: peft's own unmerge
    subtracts the delta again, which rounds. Layers `mergeable` declines keep the arm's LoRA active, exact but not
    free.

    The backup is one CPU copy of every weight an adapter merges into (for all-linear LoRA, most of the model), made
    here. On a GPU that spares device memory the size of those weights (for a 12B model in bf16, some 20 GB the
    samples' keys and values need), at the price of a host-to-device copy (pinned) each time an arm is left; on a
    CPU it is what any backup costs.
    """

    def __init__(self, base, base_name: str, base_fingerprint: str, adapters: dict[str, Path]):
        self.model = base
        for name, folder in adapters.items():
            _check_adapter(folder, base_name, base_fingerprint)
            if not hasattr(self.model, "peft_config"):
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            else:
                self.model.load_adapter(str(folder), adapter_name=name)
        self.model.eval()
        self.merged = {name: mergeable(self.model, name) for name in adapters}
        layers = dict.fromkeys(layer for chosen in self.merged.values() for layer in chosen)
        self.originals = {layer: _host_copy(layer.get_base_layer().weight) for layer in layers}

    @contextmanager
    def use(self, adapter: str | None):
        if adapter is None:
            if hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
            return
        self.model.set_adapter(adapter)
        layers = self.merged[adapter]
        try:
            for layer in layers:
                layer.merge(adapter_names=[adapter])
            yield self.model
        finally:
            for layer in layers:
                layer.get_base_layer().weight.data.copy_(self.originals[layer])
                layer.merged_adapters.clear()


def mergeable(model, adapter: str) -> list:
    """The LoRA layers where `adapter` is merged while it is used; elsewhere it stays active, unmerged.

    Declined: layers other than a plain LoRA Linear (quantized ones: bitsandbytes, GPTQ, ...; embeddings), and
    weights that are not a plain floating tensor (quantized, or a DTensor shard under FSDP), where a merge is not
    `weight += scale * B @ A` or a copy cannot restore it; a weight another module shares (tied embeddings,
    replicated layers), which the merge would change there too; LoRA variants (DoRA, aLoRA, ...), whose output is
    not the base layer's plus a fixed delta or whose merge is their own; a trained LoRA bias, whose merge writes
    the base bias too. Dropout needs nothing (the switcher runs the model in eval mode, where it is the identity),
    nor does modules_to_save (peft runs the arm's own copy of those modules either way).
    """
    from peft.tuners import lora

    counts = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    layers = []
    for layer in model.modules():
        if type(layer) is not lora.Linear or adapter not in layer.lora_A:
            continue
        weight = layer.get_base_layer().weight
        if (
            adapter not in layer.lora_variant
            and not layer.lora_bias[adapter]
            and type(weight.data) is torch.Tensor
            and weight.dtype.is_floating_point
            and counts[id(weight)] == 1
        ):
            layers.append(layer)
    return layers


def _host_copy(weight: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a weight; pinned when the weight is on a GPU, so that copying it back is fast."""
    return torch.empty(weight.shape, dtype=weight.dtype, pin_memory=weight.is_cuda).copy_(weight.detach())


def _check_adapter(folder: Path, base_name: str, base_fingerprint: str) -> None:
    manifest_file = folder / "manifest.json"
    if not manifest_file.exists():
        raise FileNotFoundError(f"{manifest_file}: missing; was the adapter trained by whytune?")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("base_fingerprint") != base_fingerprint:
        raise AdapterMismatchError(
            f"{folder} was trained for base model {manifest.get('base_model')!r} "
            f"(fingerprint {manifest.get('base_fingerprint')}), not for {base_name!r} ({base_fingerprint})"
        )


def batch_seed(*parts: object) -> int:
    """A seed fixed by (run seed, arm, condition, first sample index): a resumed run samples the same."""
    return zlib.crc32("/".join(map(str, parts)).encode())


@torch.no_grad()
def sample_batch(
    model, tokenizer, prompt_ids: torch.Tensor, prefix_cache, n: int, sampling: Sampling, seed: int
) -> list[tuple[str, str]]:
    """n replies to one prompt: (text, finish) with finish "eos" or "length"."""
    if sampling.backend == "fast" and fastgen.supports(model):
        prefix = prefill(model, prompt_ids) if prefix_cache is None else prefix_cache
        out = fastgen.sample(
            model,
            prompt_ids,
            prefix,
            n,
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            seed,
            tokenizer.eos_token_id,
        )
        return [
            (tokenizer.decode(tokens, skip_special_tokens=True), "eos" if finished else "length")
            for tokens, finished in zip(out.tokens, out.finished)
        ]
    return hf_batch(model, tokenizer, prompt_ids, prefix_cache, n, sampling, seed)


def hf_batch(
    model, tokenizer, prompt_ids: torch.Tensor, prefix_cache, n: int, sampling: Sampling, seed: int
) -> list[tuple[str, str]]:
    """transformers' `generate`, the prefix cache (if any) expanded along the batch: any architecture."""
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
    torch.manual_seed(seed)
    greedy = sampling.temperature == 0
    out = model.generate(
        input_ids=prompt_ids.expand(n, -1),
        attention_mask=torch.ones(n, prompt_ids.shape[1], dtype=torch.long, device=prompt_ids.device),
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{fastgen.cache_keyword(model): cache},
    )
    replies = []
    for row in out[:, prompt_ids.shape[1] :]:
        finished = bool((row == tokenizer.eos_token_id).any())
        replies.append((tokenizer.decode(row, skip_special_tokens=True), "eos" if finished else "length"))
    return replies


@torch.no_grad()
def prefill(model, prompt_ids: torch.Tensor):
    """Keys and values of all prompt tokens but the last, computed once and shared by every sample."""
    from transformers import DynamicCache

    # The language model's config: its layers (sliding or full) shape the cache; a multimodal config nests it.
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    model(input_ids=prompt_ids[:, :-1], use_cache=True, logits_to_keep=1, **{fastgen.cache_keyword(model): cache})
    return cache


def encode_prompt(tokenizer, prompt: EvalPrompt, device: torch.device) -> torch.Tensor:
    messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
    return encode_messages(tokenizer, messages, device)


def encode_messages(tokenizer, messages: list[dict], device: torch.device) -> torch.Tensor:
    """The chat's token ids with the assistant's turn opened, as the model is asked to reply."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    return ids["input_ids"].to(device)


def sample_store(folder: Path, key: str) -> Path:
    """The samples file of one arm x seed, claimed for one set of settings (a mismatch is an error)."""
    claim(folder, key)
    return folder / "samples.jsonl"


def existing(store: Path, condition: str) -> int:
    if not store.exists():
        return 0
    return sum(1 for row in read_jsonl(store, repair_tail=True) if row["condition"] == condition)
