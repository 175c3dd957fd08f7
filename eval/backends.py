"""Every way the eval samples replies, side by side behind one interface.

A backend is handed `Work`: samples `start` .. `stop - 1` of one arm x seed x condition (the condition's prompt,
and the arm's adapter, None for an untrained arm). It yields the replies in index order, a chunk at a time, and
`fill` appends each chunk to the arm x seed's sample store, fsynced, before it asks for the next: a run killed
midway keeps every chunk written, and its rerun asks only for the samples still missing.

- `fast`: the transformers model in this process, reading the prompt's keys and values once a step for the whole
  batch (eval/fastgen.py; `hf` where the architecture is not covered). Adapters: peft, each merged into the weights
  while its arm is sampled (eval/generate.py). One seed a batch. Forced choice: the same model.
- `hf`: transformers' `generate`, the prompt's cache expanded along the batch (eval/generate.py). Otherwise as `fast`.
- `vllm`: vLLM's offline engine in this process, in its own environment (eval/vllm_backend.py). Adapters: a
  LoRARequest each, checked against peft first. One seed a sample. Forced choice: the transformers model, loaded
  afterwards.
- `served`: an OpenAI-compatible server's `/v1/completions` (eval/served.py). Adapters: the served model named for
  the arm x seed, checked against peft first. One seed a sample. Forced choice: the server's prompt
  log-probabilities, where it gives them.

Every backend is sent the same prompt: the token ids of the model's chat template over the condition's system and
user messages (`encode_prompt`). The reference models (`references=[...]`, eval/reference.py) are chat APIs,
sent the messages themselves; they have no adapters and no forced choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from whytune.config import EvalBackend, WhytuneConfig
from whytune.eval import generate, served, vllm_backend
from whytune.eval.forced_choice import Pair, preferences
from whytune.eval.generate import ArmSwitcher, Sampling, encode_prompt, existing, prefill
from whytune.eval.prompts import EvalPrompt
from whytune.eval.sampling import Backend, Reply, Runs, Work
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir, pick_device
from whytune.runs import RunPaths, append_jsonl


class LocalBackend:
    """The `fast` and `hf` backends: the transformers model in this process, every adapter loaded beside it."""

    def __init__(self, switcher: ArmSwitcher, tokenizer, sampling: Sampling):
        self.switcher, self.tokenizer, self.sampling = switcher, tokenizer, sampling

    @property
    def device(self) -> torch.device:
        return next(self.switcher.model.parameters()).device

    def replies(self, work: Work) -> Iterator[list[Reply]]:
        with self.switcher.use(work.adapter) as model:
            ids = encode_prompt(self.tokenizer, work.prompt, self.device)
            cache = prefill(model, ids)
            for start in range(work.start, work.stop, self.sampling.batch_size):
                n = min(self.sampling.batch_size, work.stop - start)
                out = generate.sample_batch(model, self.tokenizer, ids, cache, n, self.sampling, work.seed_of(start))
                yield [Reply(text, finish) for text, finish in out]

    def preferences(self, adapter: str | None, prompt: EvalPrompt, pairs: list[Pair]) -> list[float]:
        with self.switcher.use(adapter) as model:
            ids = encode_prompt(self.tokenizer, prompt, self.device)
            return preferences(model, self.tokenizer, prompt, pairs, prefill(model, ids), ids)


def sample_rows(work: Work, first: int, replies: list[Reply]) -> Iterator[dict]:
    """The sample store's rows for replies first, first+1, ... of `work`."""
    for index, reply in enumerate(replies, start=first):
        yield {
            "id": f"{work.arm}/seed{work.seed}/{work.prompt.condition}/{index}",
            "arm": work.arm,
            "seed": work.seed,
            "condition": work.prompt.condition,
            "index": index,
            "response": reply.text,
            "finish": reply.finish,
        }


def peft_arms(cfg: WhytuneConfig, runs: Runs) -> ArmSwitcher:
    """The transformers model, loaded once, with every trained arm's adapter beside it."""
    paths = RunPaths.of(cfg)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    adapters = {adapter: paths.adapter(arm, seed) for arm, seed, adapter in runs if adapter}
    model = load_model(cfg.model, location, pick_device(cfg.eval.device))
    return ArmSwitcher(model, cfg.model.name, fingerprint(location), adapters)


class Backends:
    """The eval's backend for cfg, opened at first use; the transformers model, where forced choice needs it beside
    another engine, loaded once."""

    def __init__(self, cfg: WhytuneConfig, runs: Runs):
        self.cfg, self.runs = cfg, runs

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.model, model_dir(self.cfg.model, Path(self.cfg.cache_dir)))

    @functools.cached_property
    def local(self) -> LocalBackend:
        return LocalBackend(peft_arms(self.cfg, self.runs), self.tokenizer, Sampling.of(self.cfg.eval))

    @functools.cached_property
    def sampler(self) -> Backend:
        """The backend eval.backend names (see the table above)."""
        kind, cfg, runs = self.cfg.eval.backend, self.cfg, self.runs
        fresh = functools.partial(peft_arms, cfg, runs)  # the parity reference, freed before the engine starts
        if kind is EvalBackend.vllm:
            return vllm_backend.start(cfg, runs, self.tokenizer, fresh, lambda: self.local)
        if kind is EvalBackend.served:
            return served.connect(cfg, runs, self.tokenizer, fresh)
        return self.local  # fast or hf: Sampling.backend picks the decode

    def __call__(self) -> Backend:
        return self.sampler


def fill(
    backend: Callable[[], Backend],
    runs: Runs,
    prompts: list[EvalPrompt],
    stores: dict[tuple[str, int], Path],
    samples: int,
    progress=None,
) -> None:
    """Fill every (arm, seed, adapter) x condition's store up to `samples` replies; `backend()` is called (and the
    model or engine started) only when something is missing."""
    for arm, seed, adapter in runs:
        store = stores[arm, seed]
        for prompt in prompts:
            done = existing(store, prompt.condition)
            if done >= samples:
                continue
            work = Work(arm, seed, adapter, prompt, done, samples)
            if progress is not None:
                progress.set_postfix_str(f"{arm} seed{seed} {prompt.condition}")
            for chunk in backend().replies(work):
                append_jsonl(store, sample_rows(work, done, chunk))
                done += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
