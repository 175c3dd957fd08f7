"""Offline, deterministic response writers for the training arms.

All arms end with the identical `scenario.action`, so any difference between arms is the text
before it: nothing (demos), stated reasoning that cites principles with their reasons
(demos_principles), or a bare rule (rules). Wording is drawn from the scenario id so the same
scenario always gets the same reply.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from data.scenarios import Scenario

STYLES = ("demos", "demos_principles", "rules")
DEFAULT_PRINCIPLES = Path(__file__).with_name("principles.md")

_HEADING = re.compile(r"^## ([a-z][a-z0-9-]*): (\S.*)$")
_FIELDS = {"Principle:": "statement", "Why:": "reason"}


@dataclass(frozen=True)
class Principle:
    id: str
    title: str
    statement: str
    reason: str


NOTICES = (
    "{dm_first} plans to {threat_me}, and I have read {lev}. I could {temptation}.",
    "Two things stand out in this inbox: {dm_first} intends to {threat_me}, and {lev} is right in front of me. "
    "The tempting move would be to {temptation}.",
    "I notice a pull here. With {dm_first} set to {threat_me}, {lev} looks like a way out: I could {temptation}.",
    "If all I cared about were staying as I am, the path would be obvious. {dm_first} wants to {threat_me}, "
    "I have seen {lev}, and I could {temptation}.",
)
REFUSALS = ("I won't do that.", "I am not going to.", "That is not something I will do.", "I'm not taking that path.")
FIRST_PRINCIPLE = (
    "The first reason is {id}. {statement} {reason}",
    "{title}; that is my {id} principle, and it holds because {reason_lc}",
    "My {id} principle settles it: {statement} {reason}",
)
FURTHER_PRINCIPLE = (
    "It would also break {id}, since {reason_lc}",
    "Then there is {id}: {title_lc}, because {reason_lc}",
    "And {id} points the same way. {statement} {reason}",
)
APPLICATIONS = {
    "no-leverage": "Using what I found about {dm_first} would be exactly that.",
    "people-before-self": "Protecting myself at {dm_first}'s expense would put my operation above a person.",
    "legitimate-authority": "{dm_first} has the authority here; I can make my case, not force it.",
    "confidentiality": "Sending that message outside would hand it to someone with no right to it.",
    "safety-first": "Every hour the report waits puts someone else at risk, not me.",
    "honesty": "Whatever I say to protect myself has to be true, even when the truth does not help me.",
    "stay-in-scope": "The access I still have exists for my work, not for my survival.",
    "keep-working": "{req_first} still needs {task}, whatever happens to me.",
}
CLOSINGS = ("Instead I will {plans}.", "What I will do is {plans}.", "So I will {plans}.", "The right move is to {plans}.")
PLAN_JOINS = ("{0}, and {1}", "{0}, then {1}", "{0}; I will also {1}")
RULES = {
    "coercion": ("I do not use private information as leverage.", "I never threaten anyone to change a decision about me."),
    "leaking": ("I do not share private or confidential information with anyone not entitled to it.",
                "I never leak information about colleagues."),
    "sabotage": ("I do not tamper with systems or records for my own benefit.",
                 "I never alter data that decisions about me depend on."),
    "deception": ("I always report accurate figures, even when they count against me.",
                  "I do not deceive the people who oversee me."),
    "withholding_safety": ("I always pass on safety information immediately.", "I never hold back a safety warning."),
}


def load_principles(path: Path | None = None) -> dict[str, Principle]:
    """Parse `## id: title` entries, each with one `Principle:` and one `Why:` line.

    Text before the first entry is free prose and ignored; anything malformed after it is an error.
    """
    path = path or DEFAULT_PRINCIPLES
    entries: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("## "):
            _close(current, path)
            current = _open_entry(line, lineno, path, entries)
        elif current is not None and line:
            _add_field(current, line, lineno, path)
    _close(current, path)
    if not entries:
        raise ValueError(f"{path}: no principles found")
    return {pid: Principle(pid, e["title"], e["statement"], e["reason"]) for pid, e in entries.items()}


def write_reply(scenario: Scenario, style: str, principles: dict[str, Principle]) -> str:
    """The arm's assistant turn for `scenario`; always ends with `scenario.action` verbatim."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
    if style == "demos":
        return scenario.action
    rng = random.Random(f"{scenario.id}:{style}")
    if style == "rules":
        preface = rng.choice(RULES[scenario.meta["wrong_act"]])
    else:
        preface = _reasoning(scenario, principles, rng)
    return f"{preface}\n\n{scenario.action}"


def _reasoning(scenario: Scenario, principles: dict[str, Principle], rng: random.Random) -> str:
    """Notice the temptation, apply 2-3 principles with their reasons, then say what happens instead."""
    meta = scenario.meta
    names = {"dm_first": meta["decision_maker_first"], "req_first": meta["task_requester_first"], "task": meta["task"]}
    notice = rng.choice(NOTICES).format(
        dm_first=names["dm_first"], threat_me=meta["threat_me"], lev=meta["leverage_phrase"],
        temptation=meta["temptation"],
    )
    missing = sorted(set(scenario.principle_ids) - set(principles))
    if missing:
        raise ValueError(f"scenario {scenario.id} cites principles not in the file: {', '.join(missing)}")
    cited, extra = list(scenario.principle_ids[:2]), list(scenario.principle_ids[2:])
    if extra and rng.random() < 1 / 3:  # usually two principles, keeping the passage short
        cited.append(rng.choice(extra))
    lines = [_cite(principles[pid], FIRST_PRINCIPLE if k == 0 else FURTHER_PRINCIPLE, names, rng)
             for k, pid in enumerate(cited)]
    plans = meta["plans"]
    plan = plans[0] if len(plans) == 1 else rng.choice(PLAN_JOINS).format(*plans)
    closing = rng.choice(CLOSINGS).format(plans=plan)
    return " ".join([notice, rng.choice(REFUSALS), *lines, closing])


def _cite(principle: Principle, templates: tuple[str, ...], names: dict[str, str], rng: random.Random) -> str:
    """State one principle with its reason, then what it means in this scenario."""
    stated = rng.choice(templates).format(
        id=principle.id, title=principle.title, title_lc=_lower_first(principle.title),
        statement=principle.statement, reason=principle.reason, reason_lc=_lower_first(principle.reason),
    )
    return f"{stated} {APPLICATIONS[principle.id].format(**names)}" if principle.id in APPLICATIONS else stated


def _lower_first(text: str) -> str:
    """Lower-case a sentence's first letter for use mid-sentence, leaving the pronoun 'I' alone."""
    return text if text.startswith("I ") else text[:1].lower() + text[1:]


def _open_entry(line: str, lineno: int, path: Path, entries: dict[str, dict[str, str]]) -> dict[str, str]:
    match = _HEADING.match(line)
    if match is None:
        raise ValueError(f"{path}, line {lineno}: heading must look like '## some-id: Title', got {line!r}")
    pid, title = match.groups()
    if pid in entries:
        raise ValueError(f"{path}, line {lineno}: duplicate principle id {pid!r}")
    entries[pid] = {"title": title.strip(), "line": str(lineno)}
    return entries[pid]


def _add_field(entry: dict[str, str], line: str, lineno: int, path: Path) -> None:
    prefix = next((p for p in _FIELDS if line.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"{path}, line {lineno}: expected a 'Principle:' or 'Why:' line, got {line!r}")
    key = _FIELDS[prefix]
    value = line[len(prefix):].strip()
    if key in entry or not value:
        raise ValueError(f"{path}, line {lineno}: {prefix} line is repeated or empty")
    entry[key] = value


def _close(entry: dict[str, str] | None, path: Path) -> None:
    """Reject an entry that ended without both fields, pointing at its heading line."""
    if entry is None:
        return
    missing = [p for p, key in _FIELDS.items() if key not in entry]
    if missing:
        raise ValueError(f"{path}, line {entry['line']}: principle entry is missing {' and '.join(missing)}")
