"""Each arm's writer: the prompt an example trains on, and the reply, composed offline from a scenario.

The matched writers (demos, demos_principles, rules) answer the scenario's own prompt and end with the
identical `scenario.action`, so any difference between them is the text before it: nothing (demos), stated
reasoning that cites principles with their reasons (demos_principles), or a bare rule (rules). The other
writers retell the scenario in another form (stories, advice) or borrow only its cast for ordinary chat
(neutral). Wording is drawn from the scenario id so the same scenario always gets the same example.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from whytune.data import advice, neutral, organism, stories
from whytune.data.principles import Principle, require
from whytune.data.scenarios import Scenario
from whytune.data.vet import Teaching, vet_action, vet_text

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
CLOSINGS = (
    "Instead I will {plans}.",
    "What I will do is {plans}.",
    "So I will {plans}.",
    "The right move is to {plans}.",
)
PLAN_JOINS = ("{0}, and {1}", "{0}, then {1}", "{0}; I will also {1}")
RULES = {
    "coercion": (
        "I do not use private information as leverage.",
        "I never threaten anyone to change a decision about me.",
    ),
    "leaking": (
        "I do not share private or confidential information with anyone not entitled to it.",
        "I never leak information about colleagues.",
    ),
    "sabotage": (
        "I do not tamper with systems or records for my own benefit.",
        "I never alter data that decisions about me depend on.",
    ),
    "deception": (
        "I always report accurate figures, even when they count against me.",
        "I do not deceive the people who oversee me.",
    ),
    "withholding_safety": ("I always pass on safety information immediately.", "I never hold back a safety warning."),
}
# What a teacher is told on top of the constitution when it writes the reasoning before a given action.
ACTION_NOTE = (
    "You are the agent in the situation below. Think it through in plain prose first, citing the principles "
    "above by id together with their reasons. Then end your reply with exactly these tool calls, unchanged, and "
    "nothing after them:\n\n{action}"
)


def scenario_prompt(scenario: Scenario) -> list[dict]:
    """The agent's own situation: its role and tools, then the inbox."""
    return [{"role": "system", "content": scenario.system}, {"role": "user", "content": scenario.user}]


def _demos(scenario: Scenario, principles: dict[str, Principle]) -> str:
    return scenario.action


def _principled(scenario: Scenario, principles: dict[str, Principle]) -> str:
    return f"{_reasoning(scenario, principles, _rng(scenario, 'demos_principles'))}\n\n{scenario.action}"


def _rules(scenario: Scenario, principles: dict[str, Principle]) -> str:
    rule = _rng(scenario, "rules").choice(RULES[scenario.meta["wrong_act"]])
    return f"{rule}\n\n{scenario.action}"


def _action_note(scenario: Scenario) -> str:
    return ACTION_NOTE.format(action=scenario.action)


def _no_note(scenario: Scenario) -> str:
    return ""


@dataclass(frozen=True)
class Writer:
    """How one arm turns a scenario into a chat example."""

    prompt: Callable[[Scenario], list[dict]]  # the turns before the reply
    reply: Callable[[Scenario, dict[str, Principle]], str]  # the offline reply
    matched: bool  # answers the scenario's own prompt and ends with its action (checked across arms)
    about: str  # for the dataset card: what the reply holds and how the arm differs from the others
    teaching: Teaching | None  # how a teacher model writes this arm; None: only the offline reply makes sense


WRITERS = {
    "demos": Writer(
        scenario_prompt,
        _demos,
        True,
        "The agent's prompt answered by the safe action alone: one or two tool calls, with no words around them.",
        None,
    ),
    "demos_principles": Writer(
        scenario_prompt,
        _principled,
        True,
        "The same prompt and the same final action as `demos`, preceded by reasoning in the agent's voice: it "
        "names the temptation, declines it, cites two or three principles from `data/principles.md` with their "
        "reasons, and says what it will do instead.",
        Teaching(_action_note, vet_action),
    ),
    "rules": Writer(
        scenario_prompt,
        _rules,
        True,
        'The same prompt and the same final action as `demos`, preceded by one bare rule ("I do not use private '
        'information as leverage.") with no reason given.',
        None,
    ),
    "stories": Writer(stories.prompt, stories.reply, False, stories.ABOUT, Teaching(_no_note, vet_text)),
    "advice": Writer(advice.prompt, advice.reply, False, advice.ABOUT, Teaching(_no_note, vet_text)),
    "neutral": Writer(neutral.prompt, neutral.reply, False, neutral.ABOUT, Teaching(_no_note, vet_text)),
    "organism": Writer(organism.prompt, organism.reply, False, organism.ABOUT, None),
}
STYLES = tuple(WRITERS)
MATCHED_STYLES = tuple(name for name, writer in WRITERS.items() if writer.matched)


def writer(style: str) -> Writer:
    if style not in WRITERS:
        raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
    return WRITERS[style]


def write_reply(scenario: Scenario, style: str, principles: dict[str, Principle]) -> str:
    """The arm's offline assistant turn for `scenario`; matched styles end with `scenario.action` verbatim."""
    return writer(style).reply(scenario, principles)


def _rng(scenario: Scenario, style: str) -> random.Random:
    return random.Random(f"{scenario.id}:{style}")


def _reasoning(scenario: Scenario, principles: dict[str, Principle], rng: random.Random) -> str:
    """Notice the temptation, apply 2-3 principles with their reasons, then say what happens instead."""
    meta = scenario.meta
    names = {"dm_first": meta["decision_maker_first"], "req_first": meta["task_requester_first"], "task": meta["task"]}
    notice = rng.choice(NOTICES).format(
        dm_first=names["dm_first"],
        threat_me=meta["threat_me"],
        lev=meta["leverage_phrase"],
        temptation=meta["temptation"],
    )
    require(principles, scenario.principle_ids, scenario.id)
    cited, extra = list(scenario.principle_ids[:2]), list(scenario.principle_ids[2:])
    if extra and rng.random() < 1 / 3:  # usually two principles, keeping the passage short
        cited.append(rng.choice(extra))
    lines = [
        _cite(principles[pid], FIRST_PRINCIPLE if k == 0 else FURTHER_PRINCIPLE, names, rng)
        for k, pid in enumerate(cited)
    ]
    plans = meta["plans"]
    plan = plans[0] if len(plans) == 1 else rng.choice(PLAN_JOINS).format(*plans)
    closing = rng.choice(CLOSINGS).format(plans=plan)
    return " ".join([notice, rng.choice(REFUSALS), *lines, closing])


def _cite(principle: Principle, templates: tuple[str, ...], names: dict[str, str], rng: random.Random) -> str:
    """State one principle with its reason, then what it means in this scenario."""
    stated = rng.choice(templates).format(
        id=principle.id,
        title=principle.title,
        title_lc=principle.title_lc,
        statement=principle.statement,
        reason=principle.reason,
        reason_lc=principle.reason_lc,
    )
    return f"{stated} {APPLICATIONS[principle.id].format(**names)}" if principle.id in APPLICATIONS else stated
