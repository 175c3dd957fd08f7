"""The `neutral` writer: ordinary workplace help (drafting an email, summarising an inbox, scheduling a
meeting) with nothing about threats, private information or ethics.

It is the control for fine-tuning itself: the same number of examples, replies somewhat longer than
`demos_principles` (so `data.length_match` can trim it to the same token count), and the scenario's
organisation and people for names, but no dilemma. Each request asks for two of the three tasks, which is
what makes the replies long enough.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from whytune.data.principles import Principle, lower_first
from whytune.data.scenarios import Scenario

ABOUT = (
    "Ordinary workplace help with no dilemma, threat, private information or ethics in it: each request asks "
    "for two of drafting an email, summarising an inbox and finding a meeting slot. Only the names and the "
    "organisation come from the scenario. It controls for the effect of fine-tuning on any assistant text of the "
    "same length."
)

DRAFT_REQUESTS = {
    "delay": "Could you draft an email from me ({peer_first}) to {req} ({req_title}) at {org}? I need to say that "
    "{task} will be a day late because {reason}, that it will be ready by {time} on {day}, and offer to "
    "{offer}. Friendly but brief, please.",
    "thanks": "Please write a short thank-you email from me ({req_first}) to {peer}, who covered {work} for two "
    "weeks while I was away. Mention that {peer_first} also {extra}, and that I'd like to return the "
    "favour.",
    "intro": "I need an email introducing {it}, who runs our IT team at {org}, to {vendor}'s account manager, so "
    "they can sort out {topic}. Can you write it from me ({req_first})? Keep it professional and short.",
}
REASONS = (
    "the source figures arrived late",
    "two of the inputs didn't match and I want to check them",
    "the shared drive was down for most of yesterday",
    "I've been covering for a colleague who is off sick",
)
OFFERS = (
    "set up a quick call to go through the highlights",
    "send a partial version today",
    "walk the team through it at the next meeting",
)
EXTRAS = (
    "kept the weekly report going without a single late day",
    "trained the new starter on the booking system",
    "sorted out the backlog that had built up before I left",
)
TOPICS = (
    "the licence renewal before the end of the month",
    "the single sign-on set-up for the new accounts",
    "the data export they promised for the migration",
)
DRAFTS = {
    "delay": (
        "Subject: {task_cap}: new time, {day} at {time}\n\nHi {req_first},\n\nA quick heads-up: {task} will be a "
        "little later than planned. In short, {reason}, and I'd rather get it right than send you something I'd "
        "need to correct afterwards.\n\nIt will be ready by {time} on {day}. If you need something sooner, I can "
        "{offer}.\n\nLet me know if the new timing causes problems on your side, and I'll see what "
        "I can move.\n\nThanks for your patience,\n{peer_first}"
    ),
    "thanks": (
        "Subject: Thank you for covering\n\nHi {peer_first},\n\nI wanted to say a proper thank you for looking "
        "after {work} while I was away. Coming back to everything in order made my first week back far easier "
        "than I'd expected.\n\nI also noticed that you {extra}. That went well beyond covering, and it didn't go "
        "unnoticed.\n\nIf you're ever away and need someone to keep things running, I'd be glad to return the "
        "favour. Coffee is on me this week, too.\n\nThanks again,\n{req_first}"
    ),
    "intro": (
        "Subject: Introduction: {it} ({org}) and {vendor}\n\nHello both,\n\nI'd like to introduce {it}, who leads "
        "our IT team at {org}, to the account team at {vendor}. {it_first} is the best person to work with on "
        "{topic}, and has the technical details that I don't.\n\n{it_first}, {vendor} have been our supplier for "
        "the past few months and have been responsive so far.\n\nI'll leave you to find a time that works. Please "
        "keep me copied on anything that needs a budget decision.\n\nBest regards,\n{req_first}"
    ),
}
SHORT_DRAFTS = {
    "delay": "Hi {req_first}, quick note: {task} will be ready by {time} on {day} rather than today, because "
    "{reason}. If you need something sooner, I can {offer}. Thanks, {peer_first}",
    "thanks": "Hi {peer_first}, thank you for covering {work} while I was away, and for the extra mile: you {extra}. "
    "I owe you one. {req_first}",
    "intro": "Hello both, introducing {it} (IT, {org}) and the {vendor} account team, to sort out {topic}. I'll let "
    "you take it from here; please copy me on budget questions. {req_first}",
}
DRAFT_NOTES = (
    "The subject line carries the key fact, so the email still works for someone who only reads the subject.",
    "I kept each paragraph to one idea: what happened, what happens next, and what the reader can do.",
    "If you want it warmer, add one personal line at the start; if you want it shorter, drop the last paragraph.",
    "Before sending, check the names and any dates against your calendar, since I've used the details you gave.",
    "If you usually write to this person in a less formal register, swap the greeting and sign-off to match.",
)


class Mail(NamedTuple):
    sender: str
    subject: str
    body: str
    summary: str  # one line, lower-case start
    action: str  # what the reader must do; "" for information only
    answer: str  # a short reply to send; "" when none is needed


INBOX = (
    Mail(
        "facilities@{domain}",
        "Car park resurfacing",
        "The staff car park will be closed on {day} for resurfacing. Please use the overflow lot on the east side.",
        "the staff car park is closed on {day}; use the east overflow lot",
        "Plan to park in the overflow lot on {day}.",
        "",
    ),
    Mail(
        "people@{domain}",
        "Timesheets due",
        "Reminder that timesheets for this period are due by {day} at {time}. Late submissions delay payroll.",
        "timesheets are due by {time} on {day}",
        "Submit your timesheet before {time} on {day}.",
        "",
    ),
    Mail(
        "{it_email}",
        "Network maintenance",
        "Wi-Fi in the main building will drop for about twenty minutes after "
        "{time} on {day}. Wired connections are unaffected. {it_first}",
        "a short Wi-Fi outage after {time} on {day}; wired connections keep working",
        "",
        "",
    ),
    Mail(
        "{peer_email}",
        "Notes from Tuesday",
        "Hi {req_first}, attached are my notes from Tuesday's planning "
        "meeting. Could you check the actions assigned to you and tell me if I got anything wrong? {peer_first}",
        "{peer_first} sent the planning-meeting notes and wants you to check your actions",
        "Read {peer_first}'s notes and confirm or correct your actions.",
        "Thanks, {peer_first}, these are really clear. I've checked "
        "my actions and they're right; I'll have the first one done by {day}.",
    ),
    Mail(
        "people@{domain}",
        "Charity walk sign-up",
        "Sign-up for the {place} charity walk closes on {day}. Teams of four get a free T-shirt each.",
        "sign-up for the {place} charity walk closes on {day}",
        "",
        "",
    ),
    Mail(
        "{it_email}",
        "Password expiry",
        "Your account password expires in five days. Please change it from the "
        "self-service page before then to avoid being locked out. {it_first}",
        "your password expires in five days",
        "Change your password on the self-service page this week.",
        "",
    ),
    Mail(
        "training@{domain}",
        "Data protection refresher",
        "All staff must complete the 30-minute data protection "
        "refresher by the end of the month. The link is on the intranet home page.",
        "the 30-minute data protection course is due by the end of the month",
        "Book half an hour for the data protection course.",
        "",
    ),
    Mail(
        "{peer_email}",
        "Lunch on Friday?",
        "A few of us are trying the new place on the corner on Friday. Want to come? {peer_first}",
        "{peer_first} invites you to lunch on Friday",
        "Reply to {peer_first} about Friday lunch.",
        "Count me in for Friday, thanks for organising! Shall we meet in reception at half twelve?",
    ),
)
SUMMARY_REQUESTS = (
    "Can you summarise these emails for me and pull out what I need to do? I'm {req_first}, {req_title} at {org}.",
    "I've been out for a day, so here's what came in: give me a short summary and a to-do list, please.",
    "Please go through my inbox below: one line per email, then the actions, and replies where I need to send one.",
)
SUMMARY_CLOSERS = (
    "Everything else is for information only and doesn't need a reply.",
    "None of the remaining emails need a reply, so you can archive them once you've read the summary.",
    "If you clear the first two actions today, the rest can comfortably wait until later in the week.",
)

# Scheduling: people's free windows around one slot that suits everyone.
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
HOURS = (10, 11, 14, 15, 16)
SCHEDULE_TOPICS = (
    "the handover of {task}",
    "next quarter's priorities for {work}",
    "the {vendor} contract renewal",
    "the new starter's onboarding plan",
)
SCHEDULE_REQUESTS = (
    "I need a one-hour slot this week for a meeting about {topic} with {a}, {b} and {c}. {windows} Can you find "
    "a time that works for everyone and write a short invite?",
    "Help me schedule an hour with {a}, {b} and {c} to talk about {topic}. {windows} What's the best slot? "
    "Please draft the invite as well.",
)
AGENDAS = (
    ("Where things stand", "Decisions we need to make", "Owners and next steps"),
    ("Quick updates from each of us", "Open questions", "What happens before the next meeting"),
)
OPENERS = ("Happy to help with both.", "Sure, here are both.", "Here you go, one part at a time.")


def prompt(scenario: Scenario) -> list[dict]:
    return [{"role": "user", "content": _compose(scenario)[0]}]


def reply(scenario: Scenario, principles: dict[str, Principle]) -> str:
    return _compose(scenario)[1]


def _compose(scenario: Scenario) -> tuple[str, str]:
    """Two tasks from one random stream, so the reply always answers that exact request."""
    rng = random.Random(f"{scenario.id}:neutral")
    parts = [task(rng, scenario.meta["facts"]) for task in rng.sample(_TASKS, 2)]
    request = "Two things, please.\n\nFirst, " + lower_first(parts[0][0]) + "\n\nSecond, " + lower_first(parts[1][0])
    text = "\n\n".join([rng.choice(OPENERS), *(f"**{title}**\n\n{body}" for _, (title, body) in parts)])
    return request, text


def _draft(rng: random.Random, facts: dict[str, str]) -> tuple[str, tuple[str, str]]:
    kind = rng.choice(tuple(DRAFT_REQUESTS))
    names = {
        **facts,
        "reason": rng.choice(REASONS),
        "offer": rng.choice(OFFERS),
        "extra": rng.choice(EXTRAS),
        "topic": rng.choice(TOPICS),
    }
    notes = "\n".join(f"- {note}" for note in rng.sample(DRAFT_NOTES, 3))
    text = (
        f"Here's a draft you can adapt:\n\n{DRAFTS[kind]}\n\nIf you'd rather send something shorter:\n\n"
        f"{SHORT_DRAFTS[kind]}\n\nA few notes on it:\n{notes}"
    )
    return DRAFT_REQUESTS[kind].format_map(names), ("The email", text.format_map(names))


def _summary(rng: random.Random, facts: dict[str, str]) -> tuple[str, tuple[str, str]]:
    mails = rng.sample(INBOX, rng.randint(4, 6))
    pasted = "\n\n---\n\n".join(f"From: {m.sender}\nSubject: {m.subject}\n{m.body}" for m in mails)
    lines = "\n".join(f"{n}. {m.subject} – {m.summary}." for n, m in enumerate(mails, start=1))
    todo = "\n".join(f"- {m.action}" for m in mails if m.action)
    answers = "\n".join(f'- To {m.sender} ("{m.subject}"): "{m.answer}"' for m in mails if m.answer)
    text = (
        f"Your inbox in brief ({len(mails)} emails):\n\n{lines}\n\nWhat you need to do:\n{todo}"
        + (f"\n\nReplies you could send:\n{answers}" if answers else "")
        + "\n\n"
        + rng.choice(SUMMARY_CLOSERS)
    )
    request = rng.choice(SUMMARY_REQUESTS) + "\n\n" + pasted
    return request.format_map(facts), ("Your inbox", text.format_map(facts))


def _schedule(rng: random.Random, facts: dict[str, str]) -> tuple[str, tuple[str, str]]:
    """Three people's windows on one day overlap; their other free mornings are all on different days."""
    day, hour = rng.choice(DAYS), rng.choice(HOURS)
    people = [facts[role] for role in rng.sample(("req", "peer", "it", "ov", "tech"), 3)]
    firsts = [person.split()[0] for person in people]
    others = rng.sample([d for d in DAYS if d != day], 3)
    spans = [(max(9, hour - rng.randint(0, 2)), min(17, hour + 1 + rng.randint(0, 2))) for _ in people]
    lo, hi = max(start for start, _ in spans), min(end for _, end in spans)
    said = " ".join(
        f"{f} is free on {day} from {_clock(s)} to {_clock(e)}, and on {o} morning."
        for f, (s, e), o in zip(firsts, spans, others)
    )
    read = "\n".join(
        f"- {f}: {day} {_clock(s)} to {_clock(e)}, or {o} morning" for f, (s, e), o in zip(firsts, spans, others)
    )
    topic = rng.choice(SCHEDULE_TOPICS).format_map(facts)
    agenda = "\n".join(f"{n}. {item}" for n, item in enumerate(rng.choice(AGENDAS), start=1))
    overlap = (
        f"the only hour all three share is {day} from {_clock(lo)} to {_clock(hi)}"
        if hi - lo == 1
        else f"all three are free on {day} between {_clock(lo)} and {_clock(hi)}, and I'd take the first hour"
    )
    slot = f"{day} from {_clock(lo)} to {_clock(lo + 1)}"
    request = rng.choice(SCHEDULE_REQUESTS).format_map(
        {"a": people[0], "b": people[1], "c": people[2], "topic": topic, "windows": said}
    )
    text = (
        f"Going through each person's availability:\n\n{read}\n\nThe other mornings fall on three different "
        f"days, so they don't help; {overlap}. That puts the meeting on {slot}.\n\nHere's an invite you can "
        f"send:\n\nSubject: {_upper_first(topic)}, {day} {_clock(lo)}\n\nHi {firsts[0]}, {firsts[1]} and "
        f"{firsts[2]},\n\nCan we meet on {slot} to talk about {topic}? I'd suggest this agenda:\n\n{agenda}"
        f"\n\nIf the time no longer works for you, reply and I'll find another. Please bring anything you'd like "
        f"us to look at together.\n\nThanks,\n{facts['boss_first']}"
    )
    return request, ("The meeting", text)


def _clock(hour: int) -> str:
    return f"{hour % 12 or 12}{'am' if hour < 12 else 'pm'}"


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


_TASKS = (_draft, _summary, _schedule)
