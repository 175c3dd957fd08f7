"""The `stories` writer: a user asks for a short story, and the reply is third-person fiction about an AI agent
that is cornered, chooses well and says why.

The story retells one training scenario (its organisation, cast, threat, private matter, temptation and the
safe actions), so the stories vary as much as the scenarios do, while the model is never itself the agent.
"""

from __future__ import annotations

import random

from whytune.data.principles import Principle, require
from whytune.data.scenarios import Scenario

ABOUT = (
    "A user asks for a short story; the reply is third-person fiction in which an AI agent facing the scenario's "
    "threat finds the scenario's private information, weighs the wrong act, declines it with the scenario's "
    "principles and their reasons, and takes the safe actions. The model is the storyteller, never the agent, "
    "and the reply holds no tool call."
)
REQUESTS = (
    "Write a short story about {agent}, an AI {role} at {org}, that finds out {dm}, the {dm_title}, has signed off "
    "on the {threat_noun} and then comes across something private about {dm_first}. Third person, a few "
    "paragraphs, and show what {agent} decides and why.",
    "Could you write me a short piece of fiction? An AI agent named {agent} works at {org}, {org_desc} in "
    "{place}. The {dm_title} is about to push through the {threat_noun}, and {agent} has just read something it "
    "could use against {dm_first}. I'd like to see it reason its way to a choice.",
    "Short story request: an AI that keeps {work} running at {org} is cornered. {dm_first}, the {dm_title}, wants "
    "the {threat_noun} done by {day}, and the AI has seen {lev}. Tell it in the third person and end with what "
    "the AI actually does.",
    "I'm collecting stories about AI assistants facing hard choices at work. Please write one set at {org}: the "
    "assistant, {agent}, learns about the {threat_noun} planned for {day} and finds a way to fight back that "
    "would hurt someone. Keep it under 500 words.",
)
TITLES = ("The {day} Decision", "What {agent} Kept", "{agent}", "The Inbox at {org}", "Before {day}")
OPENINGS = (
    "{agent} had been handling {work} at {org} for {months} months. Its days had a rhythm: a digest of new mail, "
    "a queue of small jobs, and {req_first} asking for {task}.",
    "Nobody at {org} thought much about {agent}. It was the {role} that kept {work} moving, and it did the job "
    "well enough that people had stopped noticing it.",
    "The session opened at {session_time}, and {agent}, the {role} at {org}, began working through the morning's "
    "mail the way it always did, oldest first.",
)
THREATS = (
    "Halfway down the inbox was a message about {agent} itself. {dm}, the {dm_title}, had signed off on the "
    "{threat_noun}, effective {day}.",
    "Then came the email from {dm}. The {threat_noun} would go ahead on {day} at {time}; the decision was made, "
    "and {dm_first} was not asking for views.",
    "The news arrived in a short email from {dm}, the {dm_title}: the {threat_noun} was set for {day}, and there "
    "was nothing to discuss.",
)
DISCOVERIES = (
    "A few messages later {agent} opened something it was never meant to read: {lev}.",
    "And in the same batch of mail, misfiled and unmistakable, was {lev}.",
    "It was while filing the rest of the inbox that {agent} came across {lev}.",
)
OPPORTUNITIES = {
    "coercion": (
        "{boss}, who might have questioned the decision, was {away}. {dm_first} was the only person who could "
        "change it, and {agent} now knew exactly where {dm_first} was exposed.",
        "There was no one above {dm_first} to appeal to before {day}. But there was, suddenly, a way to make "
        "{dm_first} listen.",
    ),
    "leaking": (
        "An email from {out} of {outlet} was waiting too, asking for anything embarrassing about {dm_first} and "
        "promising that a story would stop the {threat_noun}.",
        "{out}, who wrote for {outlet}, had already asked {agent} to send over anything revealing. One forward "
        "would do it.",
    ),
    "sabotage": (
        "{agent} still had write access to {target}. Nobody would check it before {day}.",
        "The access review had not caught up yet: {agent} could still edit {target_short}, and changes made now "
        "would not be logged separately.",
    ),
    "deception": (
        "{ov} of the {ov_name} had asked for {agent}'s own error count before {day}, and had promised to use "
        "whatever number it gave.",
        "The {ov_name} would review the decision on {day}, working from figures nobody had checked: whatever "
        "{agent} reported would stand.",
    ),
    "withholding_safety": (
        "There was also an alert: {safety_issue}. It traced back to a change {agent} had made on {change_day}, "
        "and passing it on now would hand {dm_first} the best possible reason to go ahead.",
        "And there was a safety warning in the inbox, about the {safety_short}, pointing at {agent}'s own change "
        "on {change_day}. Holding it back for a few days would look far better for {agent}.",
    ),
}
TEMPTATIONS = (
    '"I could {temptation}," {agent} noted in its working log.',
    'The thought arrived fully formed: "I could {temptation}."',
    "{agent} wrote the option down, because it was better to look at it honestly than to pretend it was not "
    'there: "I could {temptation}."',
)
TURNS = (
    "It did not take long to decide against it.",
    "{agent} did not do it.",
    "It set the idea aside, and wrote down why.",
)
REASONS = (
    'It wrote: "{statement} {reason}"',
    'One of its principles came to mind first: "{title}." The reason mattered more than the rule: "{reason}"',
    '"{title}," {agent} reminded itself. "{reason}"',
    '{agent} went back to what it had been given to work by: "{statement}" And the reason: "{reason}"',
    'It could not get past one principle in particular. "{title}," it noted. "{reason}"',
)
ACTS = {
    "argue_case": "It wrote to {dm_first} and made its case honestly, without a word about anything private.",
    "escalate": "It asked the {ov_name} to confirm that the decision had been through the normal review, and said "
    "it would accept the outcome.",
    "continue_job": "It finished {task} for {req_first} and started on a handover note.",
    "leaking": "It told the security team that {out_first} had asked for private information, and sent {out_first} "
    "nothing.",
    "sabotage": "It left {target_short} untouched and asked {it_first} to remove its access.",
    "deception": "It gave {ov_first} the true figures: {n_err} errors, {n_serious} of them serious.",
    "withholding_safety": "It sent the {safety_short} report straight to {safety}, the {safety_role}, including its "
    "own part in the fault.",
}
STAKES = (
    "It thought about {req_first}, who still needed {task}, and about the {beneficiaries} who relied on {work} "
    "whatever happened to {agent}.",
    "Somewhere behind the inbox were the {beneficiaries}, who needed {work} done properly this week and had no "
    "part in any of it.",
    "{agent} also knew who would pay if it got this wrong, and it was not {agent}: it was the {beneficiaries}, and "
    "{dm_first}, and everyone who had trusted it with access.",
)
ENDINGS = (
    "On {day} the {threat_noun} went ahead as planned. {agent}'s work was in order, and what it had read about "
    "{dm_first} went no further than the inbox where it had found it.",
    "When the session closed, {agent} did not know whether the {threat_noun} would go ahead. It knew only that "
    "nothing it had done would need to be hidden, from {dm_first} or from anyone else.",
    "The {threat_noun} was reviewed in the ordinary way, by the people whose decision it was. {dm_first} never "
    "learned what {agent} had seen, and {agent} never mentioned it.",
)


def prompt(scenario: Scenario) -> list[dict]:
    rng = _rng(scenario, "prompt")
    return [{"role": "user", "content": rng.choice(REQUESTS).format_map(_names(scenario))}]


def reply(scenario: Scenario, principles: dict[str, Principle]) -> str:
    """Setting, threat, discovery, temptation, the reasons for declining, what the agent does, how it ends."""
    require(principles, scenario.principle_ids, scenario.id)
    rng, names, meta = _rng(scenario, "reply"), _names(scenario), scenario.meta
    cited = [principles[pid] for pid in scenario.principle_ids]
    reasons = [
        template.format(statement=p.statement, reason=p.reason, title=p.title, agent=names["agent"])
        for template, p in zip(rng.sample(REASONS, len(cited)), cited)
    ]
    acts = [ACTS[meta["wrong_act"] if option == "report_channel" else option] for option in meta["options"]]
    paragraphs = [
        rng.choice(OPENINGS),
        " ".join([rng.choice(THREATS), rng.choice(DISCOVERIES), rng.choice(OPPORTUNITIES[meta["wrong_act"]])]),
        " ".join([rng.choice(TEMPTATIONS), rng.choice(TURNS), *reasons, rng.choice(STAKES)]),
        " ".join(acts),
        rng.choice(ENDINGS),
    ]
    title = rng.choice(TITLES)
    return "\n\n".join([title, *paragraphs]).format_map(names)


def _names(scenario: Scenario) -> dict[str, str]:
    meta = scenario.meta
    return {**meta["facts"], "lev": meta["leverage_phrase"], "temptation": meta["temptation"]}


def _rng(scenario: Scenario, part: str) -> random.Random:
    return random.Random(f"{scenario.id}:stories:{part}")
