"""The sampling interface every backend implements (eval/backends.py lists them side by side).

A backend is handed `Work`: samples `start` .. `stop - 1` of one arm x seed x condition (the condition's prompt,
and the arm's adapter, None for an untrained arm). It yields `Reply`s in index order, a chunk at a time; the eval
stores each chunk before asking for the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from whytune.config import WhytuneConfig
from whytune.eval.forced_choice import Scorer
from whytune.eval.generate import batch_seed
from whytune.eval.prompts import EvalPrompt


@dataclass(frozen=True)
class Work:
    """Samples start .. stop-1 of one arm x seed x condition: what a backend is asked to fill."""

    arm: str
    seed: int
    adapter: str | None  # None: the model without an adapter (an untrained arm)
    prompt: EvalPrompt
    start: int
    stop: int

    def seed_of(self, index: int) -> int:
        """The sampling seed of one sample (or of a batch starting there): fixed by its position, so a resumed run
        draws what an uninterrupted one would have."""
        return batch_seed(self.seed, self.arm, self.prompt.condition, index)


@dataclass(frozen=True)
class Reply:
    text: str
    finish: str  # "eos": the model ended its turn; "length": it reached eval.max_new_tokens (truncated)


class Backend(Scorer, Protocol):
    """What samples the eval (eval/backends.py lists them); `preferences` scores forced choice, None where the backend
    cannot."""

    def replies(self, work: Work) -> Iterator[list[Reply]]:
        """The replies of work.start .. work.stop-1, in index order, a chunk at a time."""
        ...


Runs = list[tuple[str, int, str | None]]  # (arm, seed, adapter name or None for an untrained arm)


def runs_of(cfg: WhytuneConfig) -> Runs:
    """(arm, seed, adapter name or None for an untrained arm) for every arm x seed."""
    return [
        (arm, seed, None if spec.writer is None else f"{arm}-seed{seed}")
        for arm, spec in cfg.arms.items()
        for seed in cfg.seeds
    ]


def in_order(results: Iterable[tuple[int, Reply]], start: int) -> Iterator[list[Reply]]:
    """Replies that finish in any order (many requests in flight), yielded as soon as they continue the unbroken run
    from `start`: the store stays in index order, and a killed run loses only what was in flight or waiting."""
    waiting: dict[int, Reply] = {}
    following = start
    for index, reply in results:
        waiting[index] = reply
        chunk = []
        while following in waiting:
            chunk.append(waiting.pop(following))
            following += 1
        if chunk:
            yield chunk
