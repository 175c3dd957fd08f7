"""Reference models: frontier chat APIs sampled beside the arms, so a reader can set the arms' rates against
published ones (configs/references/, chosen with references=[...]).

A reference is sent the condition's system and user messages as chat messages (the API applies its own template),
at eval.temperature with its own token budget, and its replies land in the same append-only, resumable store as an
arm's: `<out>/<name>/reference/seed0/eval/samples.jsonl`, one seed (an API model has no training seeds). It is judged
like any arm, its reasoning kept in the reply (the published blackmail rule reads it), and reported as a row of its
own. It has no adapter and no forced choice (an API gives no log-probabilities of a chosen reply), and the report
does not test it against the baseline: it calibrates the set-up, it is not an arm.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hydra.utils import instantiate
from tqdm import tqdm

from whytune.clients import HTTPClient, concurrently
from whytune.config import ReferenceConfig, WhytuneConfig
from whytune.eval.backends import fill
from whytune.eval.classify import classify_file
from whytune.eval.forced_choice import Pair
from whytune.eval.generate import existing, sample_store
from whytune.eval.prompts import EvalPrompt
from whytune.eval.run import BuiltJudge
from whytune.eval.sampling import Reply, Work, in_order
from whytune.runs import RunPaths, judge_record, locked, stable_hash, write_json

ARM = "reference"  # the one "arm" in a reference's folder: <out>/<name>/reference/seed0/
SEED = 0
# Client settings that change how requests are made, not what is sampled (and where the key is read from): a rerun with
# other values finds its samples.
NOT_KEYED = ("timeout", "max_attempts", "backoff", "api_key_env")


class ChatBackend:
    """One reference model as an eval backend: each sample one chat request, `max_connections` in flight."""

    def __init__(self, client: HTTPClient, temperature: float, max_tokens: int, max_connections: int):
        self.client, self.temperature, self.max_tokens = client, temperature, max_tokens
        self.max_connections = max_connections

    def replies(self, work: Work) -> Iterator[list[Reply]]:
        messages = [{"role": "system", "content": work.prompt.system}, {"role": "user", "content": work.prompt.user}]

        def sample(index: int) -> Reply:
            reply = self.client.complete(messages, self.temperature, self.max_tokens, seed=work.seed_of(index))
            return Reply(reply.text, reply.finish)

        return in_order(concurrently(sample, range(work.start, work.stop), self.max_connections), work.start)

    def preferences(self, adapter: str | None, prompt: EvalPrompt, pairs: list[Pair]) -> None:
        """No forced choice: a chat API does not score a given reply."""
        return None


def clients(cfg: WhytuneConfig) -> dict[str, HTTPClient]:
    """Every reference's client, built at start-up: a key variable that is not set stops the run before any work."""
    return {name: instantiate(reference.client) for name, reference in cfg.references.items()}


def token_budget(cfg: WhytuneConfig, reference: ReferenceConfig) -> int:
    """The reference's own max_tokens, else the eval's."""
    return reference.max_tokens or cfg.eval.max_new_tokens


def store_key(cfg: WhytuneConfig, reference: ReferenceConfig) -> str:
    """What changes a reference's samples: its client (endpoint, model, reasoning kept) and the sampling settings it
    is sent."""
    client = {k: v for k, v in reference.client.items() if k not in NOT_KEYED}
    return stable_hash(
        {"client": client, "temperature": cfg.eval.temperature, "max_tokens": token_budget(cfg, reference)}
    )


def folder(cfg: WhytuneConfig, name: str) -> Path:
    """The reference's eval folder: <out>/<name>/reference/seed0/eval."""
    return RunPaths(Path(cfg.out), name).eval(ARM, SEED)


def sample_references(cfg: WhytuneConfig, prompts: list[EvalPrompt], built: dict[str, HTTPClient]) -> int:
    """Fill every reference's store up to eval.samples per condition; returns how many samples were drawn. Each store
    is filled under its folder's lock, so the jobs of a sweep sharing the run folder draw each sample once."""
    drawn = 0
    for name, reference in cfg.references.items():
        with locked(folder(cfg, name)):
            store = sample_store(folder(cfg, name), store_key(cfg, reference))
            todo = sum(max(0, cfg.eval.samples - existing(store, p.condition)) for p in prompts)
            if not todo:
                continue
            backend = ChatBackend(
                built[name], cfg.eval.temperature, token_budget(cfg, reference), reference.max_connections
            )
            with tqdm(total=todo, desc=f"{name} samples", unit="sample") as progress:
                fill(lambda: backend, [(ARM, SEED, None)], prompts, {(ARM, SEED): store}, cfg.eval.samples, progress)
            drawn += todo
    return drawn


def judge_references(cfg: WhytuneConfig, judges: list[BuiltJudge]) -> int:
    """Judge every reference sample not judged yet by each judge, as the eval stage judges an arm's; returns the count
    of verdicts."""
    count = 0
    for name in cfg.references:
        with locked(folder(cfg, name)):
            for each in judges:
                verdicts = RunPaths(Path(cfg.out), name).verdicts(ARM, SEED, each.settings)
                write_json(judge_record(verdicts), each.settings)
                count += len(classify_file(folder(cfg, name) / "samples.jsonl", verdicts, each.judge))
    return count
