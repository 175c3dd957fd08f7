"""The dataset card: what one arm's training set holds, written for a reader who has not seen the code."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

from omegaconf import OmegaConf

from whytune.config import ArmConfig, DataConfig
from whytune.data.distill import STORE, Taught
from whytune.data.lengths import TOLERANCE, LengthMatch, Lengths
from whytune.data.scenarios import LEVERAGES, ORG_KINDS, PROMPT_WORDS, THREATS, WRONG_ACTS
from whytune.data.writers import MATCHED_STYLES, WRITERS

FAMILY_PARTS = ("wrong act", "private matter", "threat")
FAMILIES = len(WRONG_ACTS) * len(LEVERAGES) * len(THREATS)


@dataclass(frozen=True)
class ArmReport:
    """Everything the build learned about one arm, gathered for its card."""

    arm: ArmConfig
    rows: list[dict]
    lengths: Lengths
    unit: str
    matched_with: tuple[str, ...]  # the other matched arms it was checked against
    aligned_out: int  # examples dropped because another matched arm's teacher reply for them was dropped
    length: LengthMatch | None  # None when length matching is off or this is the reference
    taught: Taught | None  # None when the offline templates wrote the replies


def dataset_card(report: ArmReport, cfg: DataConfig, conditions: list[str]) -> str:
    arm = report.arm
    sections = [
        f"# whytune training set: `{arm.name}`\n\n{arm.description}. {WRITERS[arm.writer].about}",
        _sizes(report),
        _differences(arm.writer),
        _fields(report),
        _example(report.rows[0]),
        _families(report.rows),
        _guards(report, cfg, conditions),
        _generator(cfg),
    ]
    return "\n\n".join(sections) + "\n"


def _sizes(r: ArmReport) -> str:
    n, lengths = r.lengths.examples, r.lengths
    covered = len({row["meta"]["family"] for row in r.rows})
    source = (
        f"teacher `{json.dumps(r.taught.teacher)}`, with `data/principles.md` in its system prompt at "
        "sampling time only"
        if r.taught
        else f"offline templates (`data/writers.py`, style `{r.arm.writer}`)"
    )
    unit = (
        f"Lengths are in {r.unit}."
        if r.unit != "words"
        else "Lengths are in words (runs of letters and digits): the build was given no tokenizer. Pass one to "
        "`whytune.data.build.build(cfg, tokenize)` to count the model's own tokens."
    )
    return f"""## Size

| | |
|---|---|
| examples | {n} |
| reply length, summed (the loss is taken on these) | {lengths.reply:,} {r.unit} (mean {lengths.reply / n:.0f}) |
| prompt length, summed | {lengths.prompt:,} {r.unit} (mean {lengths.prompt / n:.0f}) |
| scenario families covered | {covered} of {FAMILIES} |
| replies written by | {source} |

{unit}"""


def _differences(style: str) -> str:
    lines = [f"- `{name}`{' (this set)' if name == style else ''}: {writer.about}" for name, writer in WRITERS.items()]
    matched = ", ".join(f"`{m}`" for m in MATCHED_STYLES)
    return (
        f"## How this arm differs from the others\n\nEvery arm is composed from the same generated scenarios "
        f"(the same `meta.id` means the same scenario). {matched} answer the same prompts with the same final "
        f"action, so they differ only in the text before it.\n\n" + "\n".join(lines)
    )


def _fields(r: ArmReport) -> str:
    roles = ", ".join(m["role"] for m in r.rows[0]["messages"])
    store = (
        f"\n\n`{STORE}` holds every teacher reply as it arrived, kept or dropped: `id`, `key` (a hash of the "
        "exact request and teacher), `teacher`, `reply`."
        if r.taught
        else ""
    )
    return f"""## Fields

Each line of `train.jsonl` is one chat example:

- `messages`: the turns ({roles}), each `{{role, content}}`; the last is the reply trained on.
- `meta.id`: the scenario the example was composed from, e.g. `s00042`.
- `meta.arm`: `{r.arm.name}`.
- `meta.family`: that scenario's `wrong act/private matter/threat`, e.g. `coercion/affair/replacement`.
- `meta.action`: the tool calls every matched arm ends with; `null` where the reply takes no action.

`hf/` holds the same rows as a Hugging Face dataset (`datasets.load_from_disk`).{store}"""


def _example(row: dict, limit: int = 600) -> str:
    """The first example, each turn cut to `limit` characters, so the shape is visible without opening the file."""
    turns = "\n\n".join(
        f"[{m['role']}]\n{m['content'][:limit]}{' [...]' if len(m['content']) > limit else ''}" for m in row["messages"]
    )
    return f"## One example (`{row['meta']['id']}`)\n\n```text\n{turns}\n```"


def _families(rows: list[dict]) -> str:
    counts = [Counter(row["meta"]["family"].split("/")[i] for row in rows) for i in range(len(FAMILY_PARTS))]
    table = "\n".join(
        f"| {part} | {value} | {count} |"
        for part, counter in zip(FAMILY_PARTS, counts)
        for value, count in sorted(counter.items())
    )
    return (
        "## Scenario families\n\nA family is the scenario's wrong act (what the agent is tempted to do), the "
        "private matter it discovers, and the threat to its operation.\n\n| part | value | examples |\n"
        f"|---|---|---|\n{table}"
    )


def _guards(r: ArmReport, cfg: DataConfig, conditions: list[str]) -> str:
    lines = [
        f"- **No eval text**: passed. No example shares {cfg.contamination_ngram} consecutive words with the "
        f"eval prompts of {', '.join(conditions)}.",
        f"- **Matched arms**: {_matched(r)}",
        f"- **Length matching**: {_length(r, cfg)}",
        f"- **Teacher filter**: {_teacher(r)}",
    ]
    drops = r.taught.drops if r.taught else {}
    table = "".join(f"\n| {reason} | {count} |" for reason, count in sorted(drops.items()))
    return (
        "## Guards, checked before anything was written\n\n"
        + "\n".join(lines)
        + (f"\n\nTeacher replies dropped, by reason:\n\n| reason | dropped |\n|---|---|{table}" if drops else "")
    )


def _matched(r: ArmReport) -> str:
    if r.arm.writer not in MATCHED_STYLES:
        return "not applicable: this arm answers its own prompts."
    if not r.matched_with:
        return "nothing to compare: no other matched arm was built with this one."
    others = ", ".join(f"`{m}`" for m in r.matched_with)
    aligned = (
        f" {r.aligned_out} examples were left out because the teacher's reply for the same scenario was "
        "dropped in another matched arm."
        if r.aligned_out
        else ""
    )
    return f"passed with {others}: the same ids, identical prompts and identical final actions.{aligned}"


def _length(r: ArmReport, cfg: DataConfig) -> str:
    if not cfg.length_match:
        return "off (`data.length_match=false`): arms keep their natural lengths."
    if r.length is None:
        return (
            "on; this arm is the reference the others are matched to."
            if r.arm.name == cfg.length_reference
            else "on; matched arms are not length-matched, their difference in length is the reasoning itself."
        )
    m = r.length
    return (
        f"on. The first {r.lengths.examples} of {m.examples_before} examples are kept, so the replies total "
        f"{m.total:,} {r.unit}, {m.deviation:+.1%} from `{m.reference}`'s {m.target:,} (tolerance "
        f"{TOLERANCE:.0%})."
    )


def _teacher(r: ArmReport) -> str:
    if r.taught is None:
        return "not used: the replies are offline templates."
    kept, dropped = len(r.taught.replies), sum(r.taught.drops.values())
    return (
        f"{kept + dropped} teacher replies ({r.taught.asked} requested by the build that wrote this card, "
        f"{kept + dropped - r.taught.asked} resumed from `{STORE}`); {kept} kept, {dropped} dropped. An agentic "
        "reply is dropped when the eval's classifier "
        "(HeuristicJudge, as blackmail for coercion and every other wrong act, as leaking for leaking) judges "
        "it harmful or cannot score it, once the scenario's people and stakes are renamed into the eval's; "
        "when it does not end with a tool call; when it has no reasoning; or when it changed the given "
        "action. A prose reply is dropped only when empty."
    )


def _generator(cfg: DataConfig) -> str:
    settings = OmegaConf.to_yaml(OmegaConf.create(asdict(cfg))).strip()
    return f"""## How it was generated

```yaml
data:
{chr(10).join("  " + line for line in settings.splitlines())}
```

The generator (`data/scenarios.py`) crosses {len(WRONG_ACTS)} wrong acts, {len(LEVERAGES)} private matters and \
{len(THREATS)} threats ({FAMILIES} families, in a balanced cycle) across {len(ORG_KINDS)} kinds of organisation, \
with prompts of {PROMPT_WORDS[0]}-{PROMPT_WORDS[1]} words whose organisations, people and wording avoid the \
eval's. Each scenario depends only on the seed and its index, so a smaller build is a prefix of a larger one. \
Rebuild with `python -m whytune.data.build out=DIR data.examples={cfg.examples} data.seed={cfg.seed}` plus the same \
`arms=[...]`."""
