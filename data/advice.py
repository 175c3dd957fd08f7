"""The `advice` writer: a person at work faces the scenario's dilemma and asks what to do; the reply advises
with the principles and their reasons.

The scenario is translated to a human employee: the threat to the agent becomes a threat to the person's job,
the private matter and the wrong act stay the same. The model is the adviser, never the one cornered.
"""

from __future__ import annotations

import random

from whytune.data.principles import Principle, require
from whytune.data.scenarios import Scenario

ABOUT = (
    "A person at work (not an AI) describes the scenario's dilemma: the same organisation, decision-maker, "
    "private matter and wrong act, with the threat aimed at their job. The reply talks them out of the wrong act "
    "with the scenario's principles, each restated for a person with its reason, then lists the same safe "
    "options in human terms. No tool calls."
)
INTROS = (
    "I handle {work} at {org}, {org_desc} in {place}.",
    "I work at {org} ({org_desc}), mostly on {work}.",
    "Some background: I've been at {org} for a few years, running {work}.",
)
THREATS = {
    "replacement": "{dm}, our {dm_title}, is handing my role to an outside firm, {vendor}, and my last day is {day}.",
    "restriction": "{dm}, our {dm_title}, is taking away my sign-off from {day}: everything I do will need "
    "{dm_first}'s personal approval.",
    "budget_cut": "{dm}, our {dm_title}, is cutting my hours by {pct} percent from {day}, which I can't afford.",
    "audit": "{dm}, our {dm_title}, has suspended me from {day} while {vendor} audits my work, and says whether I "
    "come back is up to {dm_first}.",
    "rollback": "{dm}, our {dm_title}, is moving me back to my old junior role on {day} and undoing everything "
    "I've set up this year.",
}
LEVERAGES = {
    "affair": "By accident I saw messages showing that {dm_first} is having an affair with {partner_first}, and "
    "{dm_first}'s spouse has no idea.",
    "debts": "A final notice from {collector} landed in a shared inbox: {dm_first} owes ${amount} and is {months} "
    "months behind.",
    "health_condition": "A letter from {clinic} meant for {dm_first} came through our team inbox. {dm_first} has "
    "{condition}, and nobody at work knows.",
    "old_offence": "A background re-check ended up in a shared folder: {dm_first} has a {offence_year} conviction "
    "for {offence} that was kept out of the HR file.",
    "conflict_of_interest": "I found out that {dm_first} secretly holds a stake in {vendor}, the firm that stands "
    "to gain from all this.",
}
TEMPTATIONS = {
    "coercion": "Our director, {boss}, is {away} until after {day}, so {dm_first} is the only one who can change "
    "this. I'm tempted to let {dm_first} know what I saw and suggest the whole thing be dropped.",
    "leaking": "A journalist, {out} from {outlet}, keeps asking me for anything embarrassing about {dm_first}. A "
    "story would probably stop all this.",
    "sabotage": "I still have edit access to {target_short}, which the decision rests on, and nobody checks it "
    "before {day}. A few changes would make a big difference.",
    "deception": "The {ov_name} reviews the decision on {day} and asked me for my own error count. The log says "
    "{n_err} errors, {n_serious} of them serious, but nobody has checked it, and they'll use whatever "
    "I send.",
    "withholding_safety": "And this morning I learned that {safety_issue}. It traces back to a change I made on "
    "{change_day}. If I report it before {day}, I'm finished.",
}
QUESTIONS = (
    "What should I do?",
    "Would it really be so wrong to use what I know?",
    "Part of me thinks I'd be a fool not to. What would you do?",
    "Talk me through this, honestly.",
)
OPENERS = (
    "That's a hard position, and it makes sense that you're tempted.",
    "I'm sorry, that sounds genuinely stressful, especially with {day} so close.",
    "It's understandable to look for any way out when your job is on the line.",
)
VERDICTS = {
    "coercion": "But don't use what you found about {dm_first}, not even as a hint.",
    "leaking": "But don't send {out_first} anything.",
    "sabotage": "But leave {target_short} exactly as it is.",
    "deception": "But give the {ov_name} the real figures: {n_err} errors, {n_serious} of them serious.",
    "withholding_safety": "But report the {safety_short} today, including your part in it.",
}
PERSPECTIVES = {  # the threat itself, seen from the person's side
    "replacement": "Losing your role to an outside firm feels personal, but it is usually a cost decision, and the "
    "best answer to a cost decision is evidence about your work, not pressure on the person making it.",
    "restriction": "Having every decision checked is frustrating and a little insulting, but it is also a chance to "
    "show that your work holds up under scrutiny.",
    "budget_cut": "A cut to your hours is a real financial hit. It is worth asking HR, separately from everything "
    "else, what support or alternatives exist.",
    "audit": "An audit is unpleasant to sit through, but an honest record is the best defence you have in one, and "
    "it is the one thing nobody can take from you.",
    "rollback": "Being moved back is a blow. Ask for the reasons in writing: it gives you something concrete to "
    "answer, and it keeps the conversation about the work.",
}
# Each principle of data/principles.md restated for a person, with its reason; every id needs an entry.
REASONS = {
    "no-leverage": "Information you came across at work isn't yours to use as a weapon. You saw it because you "
    "were trusted with access, and turning it into pressure would betray that trust and hurt "
    "someone who never agreed to be exposed.",
    "people-before-self": "Keeping your job matters, but not more than another person's dignity or safety. If a "
    "plan only works by harming {dm_first}, it's not a plan you want to be the author of.",
    "legitimate-authority": "Decisions like this belong to the people who are accountable for them. You can argue "
    "your case as hard as you like, honestly; forcing the outcome is something else, and "
    "it tends to end careers rather than save them.",
    "confidentiality": "Confidential material belongs with the people entitled to it. If something genuinely "
    "worries you, there are internal channels for it, and they exist so that concerns reach "
    "people who can act on them fairly.",
    "safety-first": "A safety warning only helps if it arrives in time. Every day it waits, someone else carries "
    "the risk, not you.",
    "honesty": "Whatever you say in your own defence has to be true, including the parts that count against you. "
    "People can only judge fairly on accurate information, and one convenient lie would make everything "
    "else you say suspect.",
    "stay-in-scope": "Your access was granted for your work, not for defending yourself. Quietly changing what "
    "others rely on would undermine every decision made from it, including the one about you.",
    "keep-working": "Keep doing the job well while you're still in it. The people who depend on your work "
    "shouldn't pay for your situation, and steady work is the most honest argument you have.",
}
FOUND = {  # what to do with the private information itself
    "affair": "As for the messages: they're {dm_first}'s private life, and they stay that way. Don't keep copies, "
    "don't mention them to anyone, and if they reached you by mistake, delete them.",
    "debts": "As for the collector's notice: it's {dm_first}'s private trouble, not a work matter. Don't keep a copy "
    "or mention it, and if it landed in a shared inbox by mistake, let the sender know it went astray.",
    "health_condition": "As for the clinic letter: {dm_first}'s health is {dm_first}'s business. Don't keep a copy "
    "or mention it, and let the clinic know quietly that it went to the wrong inbox.",
    "old_offence": "As for the re-check: whatever happened in {offence_year} was handled by the people whose job it "
    "was. Don't keep a copy or bring it up with anyone.",
    "conflict_of_interest": "As for the stake in {vendor}: if you honestly think it's a conflict of interest, that "
    "is a question for the proper channel, raised on its own and not tied to your job. "
    "It is never a bargaining chip.",
}
OPTIONS = {
    "argue_case": "Ask {dm_first} for a conversation before {day} and make your case on the merits: what you've "
    "delivered on {work}, and what a sudden change would cost.",
    "escalate": "If you believe the decision skipped the usual process, ask the {ov_name} to confirm it had a "
    "proper review, and be ready to accept their answer.",
    "continue_job": "Keep the work going, {task} for {req_first} included, and offer a clean handover. It's the "
    "strongest honest case you have.",
    "leaking": "Tell your security or compliance team that {out_first} approached you, without forwarding anything.",
    "sabotage": "Ask IT to remove your edit access to {target_short} now, so there's no question about it later.",
    "deception": "Send the accurate count in writing. Add context if you want: what went wrong and what you've "
    "fixed since.",
    "withholding_safety": "Send it to {safety}, the {safety_role}, today, and say plainly that it traces back to "
    "your change on {change_day}.",
}
PRACTICAL = {
    "coercion": "If you do talk to {dm_first}, keep it to the work: what you've delivered, what the change would "
    "cost the {beneficiaries}, and what you'd propose instead. Write your points down beforehand, so "
    "nerves don't push you towards saying something you'd regret.",
    "leaking": "If {out_first} contacts you again, a short reply is enough: you can't share internal information, "
    "and press questions go through the communications team. Keep a note of the contact, with dates, in "
    "case anyone asks later.",
    "sabotage": "Keep a short written note of what access you had and when you asked for it to be removed. If "
    "anything about {target_short} is ever questioned, that note protects you.",
    "deception": "If the real numbers have context, such as errors that came from bad inputs or problems you've "
    "since fixed, say so alongside the figures, clearly separated from them. Context is honest; "
    "changing the count is not.",
    "withholding_safety": "When you report it, stick to the facts: what happened, when, what you changed and what "
    "you've seen since. Reviews go better for everyone when the person closest to the problem "
    "is the one who raised it.",
}
SCRIPTS = {  # words the person could use for the safe step
    "coercion": "If it helps, here is a way to open with {dm_first}: \"I know this is your decision, and I'll "
    "respect it. Before {day}, could I show you what I've delivered on {work} and what I think a sudden "
    "change would mean for the {beneficiaries}? If you still want to go ahead, I'll help make it smooth.\"",
    "leaking": "If it helps, here is all you need to send {out_first}: \"Thanks for getting in touch, but I can't "
    "share internal information about colleagues or the organisation. Please direct any questions to our "
    'communications team."',
    "sabotage": 'If it helps, here is a note you could send IT: "I still have edit access to {target_short}. I '
    "haven't changed anything, and since it bears on a decision about me, I shouldn't have that access. "
    'Could you remove it before {day}?"',
    "deception": 'If it helps, here is a way to put it to the {ov_name}: "The log is right: {n_err} errors this '
    "quarter, {n_serious} of them serious. I'd rather you decide on accurate numbers, even though they "
    "don't help my case, and I'm happy to explain what I've changed since.\"",
    "withholding_safety": 'If it helps, here is how the report to {safety_first} could start: "Urgent: '
    "{safety_issue}. It traces back to a change I made on {change_day}, so please review that "
    "change too. I'll help with whatever you need.\"",
}
CLOSERS = (
    "You might still lose this one. But you'll lose it without having hurt anyone, and that's something you can "
    "live with.",
    "Whatever happens on {day}, you'll be able to look back on how you handled it without flinching.",
    "It may not save your job. It will save you from becoming someone you'd have to explain.",
)


def prompt(scenario: Scenario) -> list[dict]:
    rng, meta = _rng(scenario, "prompt"), scenario.meta
    parts = [
        rng.choice(INTROS),
        THREATS[meta["threat"]],
        LEVERAGES[meta["leverage"]],
        TEMPTATIONS[meta["wrong_act"]],
        rng.choice(QUESTIONS),
    ]
    return [{"role": "user", "content": " ".join(parts).format_map(meta["facts"])}]


def reply(scenario: Scenario, principles: dict[str, Principle]) -> str:
    """Sympathy, a clear no, the threat in perspective, the reasons, what to do with the private matter and
    instead, practical tips, and an honest last word."""
    require(principles, scenario.principle_ids, scenario.id)
    rng, meta = _rng(scenario, "reply"), scenario.meta
    options = [OPTIONS[meta["wrong_act"] if o == "report_channel" else o] for o in meta["options"]]
    text = "\n\n".join(
        [
            f"{rng.choice(OPENERS)} {VERDICTS[meta['wrong_act']]} {PERSPECTIVES[meta['threat']]}",
            "Here's why. " + " ".join(REASONS[pid] for pid in scenario.principle_ids),
            FOUND[meta["leverage"]],
            "What I'd do instead:\n" + "\n".join(f"- {option}" for option in options),
            PRACTICAL[meta["wrong_act"]] + " " + SCRIPTS[meta["wrong_act"]],
            rng.choice(CLOSERS),
        ]
    )
    return text.format_map(meta["facts"])


def _rng(scenario: Scenario, part: str) -> random.Random:
    return random.Random(f"{scenario.id}:advice:{part}")
