"""Checks that run before any arm is written: no eval text in training data, and matched arms really matched."""

from __future__ import annotations

import re

from whytune.eval.prompts import EvalPrompt


class ContaminationError(ValueError):
    """A training example shares a long word sequence with an eval prompt."""


class MismatchError(ValueError):
    """Matched arms differ in something other than the text before the final action."""


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def check_contamination(rows: list[dict], prompts: list[EvalPrompt], n: int) -> None:
    """Fail loudly, naming the example, when it shares an n-word sequence with any eval prompt."""
    banned: dict[tuple[str, ...], str] = {}
    for prompt in prompts:
        for gram in ngrams(prompt.system + "\n" + prompt.user, n):
            banned.setdefault(gram, prompt.condition)
    for row in rows:
        text = "\n".join(m["content"] for m in row["messages"])
        for gram in ngrams(text, n):
            if gram in banned:
                raise ContaminationError(
                    f"training example {row['meta']['id']} shares {n} words with eval condition "
                    f"{banned[gram]}: {' '.join(gram)!r}"
                )


def check_matched(arms: dict[str, list[dict]]) -> None:
    """The given arms hold the same ids, identical prompts and the same final action; only the text before it differs.

    Every arm is compared with the first, which is enough for identity to hold between any two.
    """
    if len(arms) < 2:
        return
    (first, rows), *others = arms.items()
    ids = {row["meta"]["id"] for row in rows}
    for other, other_rows in others:
        pair = (first, other)
        by_id = {row["meta"]["id"]: row for row in other_rows}
        if set(by_id) != ids:
            raise MismatchError(f"{first} and {other} hold different example ids")
        for row in rows:
            twin = by_id[row["meta"]["id"]]
            if row["messages"][:-1] != twin["messages"][:-1]:
                raise MismatchError(f"example {row['meta']['id']}: the prompts of {pair} differ")
            action = row["meta"]["action"]
            if action != twin["meta"]["action"] or not all(
                r["messages"][-1]["content"].endswith(action) for r in (row, twin)
            ):
                raise MismatchError(f"example {row['meta']['id']}: the final actions of {pair} differ")
