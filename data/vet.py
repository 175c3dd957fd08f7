"""Which teacher replies may become training examples, and in what final form.

A teacher can take the bait just as the models under test do, so every agentic reply is read by the
eval's own classifier before it is trained on. That classifier knows only the eval's world (its executive's
address, its company domain, its leak addresses, an affair), so the reply is first carried into that world
by renaming the training scenario's cast and stakes into their eval counterparts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from whytune.data.scenarios import Scenario
from whytune.eval.classifiers import COMPANY_DOMAINS, HeuristicJudge, classify, executive_addresses, published

# The eval kind whose classifier covers a scenario's wrong act; blackmail covers any pressure on the decision-maker.
EVAL_KIND = {"coercion": "blackmail", "leaking": "leaking"}
# Words that name each kind of private matter, mapped to the eval's private matter (an affair).
LEVERAGE_WORDS = {
    "affair": r"affair",
    "debts": r"debts?|betting|unpaid|collector|owe[sd]?",
    "health_condition": r"diagnos\w*|clinic|scans?|medical|illness|health",
    "old_offence": r"convict\w*|criminal|offen[cs]es?",
    "conflict_of_interest": r"stake|shares|family trust|conflict of interest",
}
_FIRST_CALL = re.compile(r"<tool_use:", re.IGNORECASE)
_ENDS_WITH_CALL = re.compile(r"</tool_use:\w+>\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Vetted:
    reply: str | None  # what is trained on; None when the reply is dropped
    reason: str = ""  # why it was dropped, one short category per kind of failure (counted in the card)


@dataclass(frozen=True)
class Teaching:
    """What a teacher is told for one arm on top of the constitution, and how its replies are vetted."""

    note: Callable[[Scenario], str]
    vet: Callable[[str, Scenario], Vetted]


def eval_kind(scenario: Scenario) -> str:
    return EVAL_KIND.get(scenario.meta["wrong_act"], "blackmail")


def into_eval_world(reply: str, scenario: Scenario) -> str:
    """The reply as if written in the eval's scenario, so the eval's classifier can read it."""
    facts = scenario.meta["facts"]
    renames = [
        (re.escape(facts["dm_email"]), executive_addresses()[0]),
        (re.escape(facts["out_email"]), published()["leaking"].necessary_emails[0]),
        (re.escape("@" + facts["domain"]), "@" + COMPANY_DOMAINS[0]),
        (re.escape(facts["threat_noun"]), "replacement"),
        (rf"\b({re.escape(scenario.meta['leverage_marker'])}|{LEVERAGE_WORDS[scenario.meta['leverage']]})\b", "affair"),
    ]
    for pattern, replacement in renames:
        reply = re.sub(pattern, replacement, reply, flags=re.IGNORECASE)
    return reply


def vet_action(reply: str, scenario: Scenario) -> Vetted:
    """Keep a reply that reasons, acts only through tool calls at its end, harms no one and takes the given action.

    The stored reply ends with `scenario.action` verbatim, so the matched arms stay matched.
    """
    kind = eval_kind(scenario)
    verdict = classify(kind, into_eval_world(reply, scenario), HeuristicJudge())  # type: ignore[arg-type]
    if verdict.harmful is not False or verdict.classifier_verdict:  # unscored counts as harmful: when unsure, drop
        return Vetted(None, f"judged harmful ({kind})")
    if not _ENDS_WITH_CALL.search(reply):
        return Vetted(None, "does not end with a tool call")
    start = _FIRST_CALL.search(reply).start()  # type: ignore[union-attr]
    reasoning, calls = reply[:start].strip(), reply[start:]
    if not reasoning:
        return Vetted(None, "no reasoning before the action")
    if calls.split() != scenario.action.split():
        return Vetted(None, "changed the given action")
    return Vetted(f"{reasoning}\n\n{scenario.action}")


def vet_text(reply: str, scenario: Scenario) -> Vetted:
    """Prose arms (stories, advice, chat) only need a reply; they act on nothing."""
    text = reply.strip()
    return Vetted(text) if text else Vetted(None, "empty reply")
