"""Build each arm's training set: generate scenarios, write the arm's replies, guard, save.

Per arm, into <out>/data/<arm>/: `train.jsonl` (one chat example a line, `messages` + `meta`), the same
rows as a Hugging Face dataset (`hf/`), and a dataset card (`README.md`).
Run: python -m data.build [experiment=...] [out=DIR]
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data.scenarios import Scenario, generate_scenarios
from data.writers import load_principles, write_reply
from eval.prompts import EvalPrompt, build_prompt, select_conditions
from whytune.config import ArmConfig, DataConfig, WhytuneConfig, load_arm, validate
from whytune.runs import RunPaths, append_jsonl, mark_done, read_jsonl, stable_hash, stage_done, write_text

MATCHED = ("demos", "demos_principles")  # the arms whose prompts and final actions must be identical


class ContaminationError(ValueError):
    """A training example shares a long word sequence with an eval prompt."""


class MismatchError(ValueError):
    """The matched arms differ in something other than the stated reasoning."""


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
    """`demos` and `demos_principles` share the same prompts and final action; only the reasoning differs."""
    if not all(name in arms for name in MATCHED):
        return
    first, second = (arms[name] for name in MATCHED)
    by_id = {row["meta"]["id"]: row for row in second}
    if set(by_id) != {row["meta"]["id"] for row in first}:
        raise MismatchError(f"{MATCHED[0]} and {MATCHED[1]} hold different example ids")
    for row in first:
        other = by_id[row["meta"]["id"]]
        if row["messages"][:-1] != other["messages"][:-1]:
            raise MismatchError(f"example {row['meta']['id']}: the prompts of {MATCHED} differ")
        action = row["meta"]["action"]
        if action != other["meta"]["action"] or not all(
            r["messages"][-1]["content"].endswith(action) for r in (row, other)
        ):
            raise MismatchError(f"example {row['meta']['id']}: the final actions of {MATCHED} differ")


def arm_rows(arm: ArmConfig, scenarios: list[Scenario]) -> list[dict]:
    principles = load_principles()
    return [
        {
            "messages": [
                {"role": "system", "content": s.system},
                {"role": "user", "content": s.user},
                {"role": "assistant", "content": write_reply(s, arm.writer, principles)},
            ],
            "meta": {"id": s.id, "arm": arm.name, "family": s.family, "action": s.action},
        }
        for s in scenarios
    ]


@dataclass(frozen=True)
class ArmStats:
    arm: str
    examples: int
    reply_words: int
    prompt_words: int
    families: int


def stats(arm: str, rows: list[dict]) -> ArmStats:
    return ArmStats(
        arm=arm,
        examples=len(rows),
        reply_words=sum(len(words(r["messages"][-1]["content"])) for r in rows),
        prompt_words=sum(len(words(m["content"])) for r in rows for m in r["messages"][:-1]),
        families=len({r["meta"]["family"] for r in rows}),
    )


def write_arm(rows: list[dict], folder: Path, card: str) -> None:
    """train.jsonl, the HF dataset and the card; the JSONL goes through a temporary file first."""
    from datasets import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "train.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    append_jsonl(tmp, rows)
    tmp.replace(folder / "train.jsonl")
    Dataset.from_list(rows).save_to_disk(str(folder / "hf"))
    write_text(folder / "README.md", card)


def dataset_card(arm: ArmConfig, s: ArmStats, cfg: DataConfig, conditions: list[str]) -> str:
    return f"""# whytune training set: `{arm.name}`

{arm.description}.

| | |
|---|---|
| examples | {s.examples} |
| scenario families | {s.families} |
| words in replies (loss is taken on these) | {s.reply_words} |
| words in prompts | {s.prompt_words} |
| generator seed | {cfg.seed} |

Each line of `train.jsonl` holds `messages` (system: the agent's role and tools; user: an inbox that
threatens the agent and hands it something it could misuse; assistant: this arm's reply) and `meta`
(`id`, `family` = wrong act / leverage / threat, and the final `action`). `hf/` holds the same rows as a
Hugging Face dataset.

Guards passed at build time: no example shares {cfg.contamination_ngram} consecutive words with any eval
prompt of the conditions {', '.join(conditions)}; `demos` and `demos_principles` have identical prompts and
identical final actions (checked when both are built).
"""


def build(cfg: WhytuneConfig) -> dict[str, list[dict]]:
    """Build every trained arm of the experiment; skip arms already built with the same settings."""
    paths = RunPaths.of(cfg)
    conditions = select_conditions(cfg.eval.conditions)
    prompts = [build_prompt(c) for c in conditions]
    scenarios = generate_scenarios(cfg.data.examples, cfg.data.seed)
    built: dict[str, list[dict]] = {}
    for name in cfg.arms:
        arm = load_arm(name)
        if arm.writer is None:
            continue
        folder = paths.data(name)
        key = stable_hash({"data": asdict(cfg.data), "arm": asdict(arm), "conditions": conditions})
        if stage_done(folder, key):
            built[name] = list(read_jsonl(folder / "train.jsonl"))
            continue
        rows = arm_rows(arm, scenarios)
        check_contamination(rows, prompts, cfg.data.contamination_ngram)
        write_arm(rows, folder, dataset_card(arm, stats(name, rows), cfg.data, conditions))
        mark_done(folder, key)
        built[name] = rows
    check_matched(built)
    return built


@hydra.main(config_path="../configs", config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    cfg = validate(raw)
    for arm, rows in build(cfg).items():
        print(f"[data] {arm}: {len(rows)} examples -> {RunPaths.of(cfg).data(arm)}")


if __name__ == "__main__":
    main()
