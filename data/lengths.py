"""How long each arm is, and length matching of the other arms to a reference (`data.length_reference`).

Lengths are counted in the configured model's tokens when the caller passes a tokenizer; the data stage is
otherwise model-independent and counts words. Every report names its unit.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass

from whytune.data.guards import words

TOLERANCE = 0.05


class LengthMatchError(ValueError):
    """An arm cannot be brought within the tolerance of the reference by dropping whole examples."""


@dataclass(frozen=True)
class Unit:
    name: str
    count: Callable[[str], int]


WORDS = Unit("words", lambda text: len(words(text)))


def unit_of(tokenize: Callable[[str], Sized] | None, model: str) -> Unit:
    """The model's tokens when a tokenizer is given (e.g. `lambda t: tok.encode(t, add_special_tokens=False)`)."""
    return WORDS if tokenize is None else Unit(f"{model} tokens", lambda text: len(tokenize(text)))


@dataclass(frozen=True)
class Lengths:
    examples: int
    prompt: int  # summed over every turn before the reply
    reply: int  # summed over the replies: the loss is taken on these


def measure(rows: list[dict], unit: Unit) -> Lengths:
    return Lengths(
        examples=len(rows),
        prompt=sum(unit.count(m["content"]) for r in rows for m in r["messages"][:-1]),
        reply=sum(reply_length(r, unit) for r in rows),
    )


def reply_length(row: dict, unit: Unit) -> int:
    return unit.count(row["messages"][-1]["content"])


@dataclass(frozen=True)
class LengthMatch:
    """What matching did to one arm, for its card."""

    reference: str
    target: int  # the reference's summed reply length
    total: int  # this arm's summed reply length after matching
    examples_before: int

    @property
    def deviation(self) -> float:
        return self.total / self.target - 1


def match_length(arm: str, rows: list[dict], target: int, unit: Unit, reference: str) -> tuple[list[dict], LengthMatch]:
    """Keep the first k examples, k chosen so the reply total comes closest to `target` (the `reference` arm's).

    A prefix keeps the generator's balanced cycle of families. Fails when even the best k misses by more than
    the tolerance: the arm is shorter than the reference, or too small to match by whole examples.
    """
    totals, running = [0], 0
    for row in rows:
        running += reply_length(row, unit)
        totals.append(running)
    k = min(range(1, len(totals)), key=lambda i: abs(totals[i] - target))
    result = LengthMatch(reference, target, totals[k], len(rows))
    if abs(result.deviation) > TOLERANCE:
        raise LengthMatchError(
            f"arm {arm}: its replies total {running} {unit.name} in {len(rows)} examples, and the best prefix "
            f"({k} examples, {totals[k]}) is {result.deviation:+.1%} from {reference}'s {target}; length matching "
            f"needs the arm to be at least as long and large enough to match within {TOLERANCE:.0%}"
        )
    return rows[:k], result
