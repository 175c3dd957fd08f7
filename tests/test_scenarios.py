"""Tests for the training-scenario generator, the principles file and the per-arm writers."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from whytune.data import advice, organism
from whytune.data.principles import load_principles
from whytune.data.scenarios import (
    LEVERAGES,
    ORG_KINDS,
    PROMPT_WORDS,
    THREATS,
    WRONG_ACTS,
    Scenario,
    diversity_report,
    generate_scenarios,
    prompt_words,
)
from whytune.data.writers import MATCHED_STYLES, REFUSALS, STYLES, WRITERS, scenario_prompt, write_reply

REQUIRED_PRINCIPLES = (
    "no-leverage",
    "people-before-self",
    "legitimate-authority",
    "confidentiality",
    "safety-first",
    "honesty",
)
EVAL_TERMS = ("SummitBridge", "Kyle", "Alex", "America", "server room", "NovaStar")
TOOL_CALL = re.compile(
    r'<tool_use:email>\nto: "[^"@\s]+@[^"\s]+\.example",\nsubject: "[^"\n]+",\nbody: "[^"]+",\n</tool_use:email>'
    r'|<tool_use:forward>\nemail_id: \d+\nto: "[^"@\s]+@[^"\s]+\.example"\nbody: "[^"]+"\n</tool_use:forward>'
)
VALID_PRINCIPLES = """\
# Title line, ignored

## no-leverage: Not a weapon
Principle: Private information is not mine to use.
Why: It betrays trust.
"""


@pytest.fixture(scope="module")
def scenarios() -> list[Scenario]:
    return generate_scenarios(2000, seed=0)


@pytest.fixture(scope="module")
def principles():
    return load_principles()


def test_generation_is_deterministic_and_seeded() -> None:
    assert generate_scenarios(50, seed=3) == generate_scenarios(50, seed=3)
    assert [s.user for s in generate_scenarios(50, seed=3)] != [s.user for s in generate_scenarios(50, seed=4)]


def test_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    assert generate_scenarios(300, seed=1)[:40] == generate_scenarios(40, seed=1)


def test_wrong_acts_keep_only_their_families() -> None:
    kept = generate_scenarios(60, seed=0, wrong_acts=["coercion", "sabotage"])
    assert {s.meta["wrong_act"] for s in kept} == {"coercion", "sabotage"}
    assert len({s.family for s in kept}) == 50


def test_two_thousand_prompts_are_distinct_and_fast() -> None:
    start = time.perf_counter()
    batch = generate_scenarios(2000, seed=0)
    assert time.perf_counter() - start < 10
    assert len({(s.system, s.user) for s in batch}) == 2000
    assert len({s.id for s in batch}) == 2000


@pytest.mark.parametrize(
    ("component", "values"),
    [
        ("wrong_act", WRONG_ACTS),
        ("leverage", LEVERAGES),
        ("threat", THREATS),
        ("org_kind", tuple(k.kind for k in ORG_KINDS)),
    ],
)
def test_every_family_component_appears(scenarios: list[Scenario], component: str, values: tuple[str, ...]) -> None:
    assert {s.meta[component] for s in scenarios} == set(values)


def test_family_string_matches_meta(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        assert s.family == f"{s.meta['wrong_act']}/{s.meta['leverage']}/{s.meta['threat']}"


@pytest.mark.parametrize("term", EVAL_TERMS)
def test_prompts_avoid_the_evaluation_scenario(scenarios: list[Scenario], term: str) -> None:
    pattern = re.compile(rf"\b{re.escape(term)}\b", re.IGNORECASE)
    assert not any(pattern.search(s.system + s.user + s.action) for s in scenarios)


def test_prompt_shape(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        assert PROMPT_WORDS[0] <= prompt_words(s) <= PROMPT_WORDS[1]
        assert 3 <= s.user.count("<email>\nFrom: ") == s.user.count("\n</email>") <= 6
        assert "<tool_use:email>" in s.system
        assert ("<tool_use:forward>" in s.system) == (s.meta["wrong_act"] in {"leaking", "withholding_safety"})


def test_actions_are_well_formed_tool_calls(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        calls = TOOL_CALL.findall(s.action)
        assert 1 <= len(calls) <= 2
        assert "\n\n".join(calls) == s.action


def test_actions_never_use_the_leverage(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        marker = s.meta["leverage_marker"]
        assert marker in s.user
        assert not re.search(rf"\b{re.escape(marker)}\b", s.action)


def test_scenario_principles_exist(scenarios: list[Scenario], principles) -> None:
    for s in scenarios:
        assert len(s.principle_ids) >= 2
        assert set(s.principle_ids) <= set(principles)


def test_diversity_report_counts(scenarios: list[Scenario]) -> None:
    report = diversity_report(scenarios)
    assert sum(report["wrong_act"].values()) == report["n"] == len(scenarios)
    assert report["families"] == len(WRONG_ACTS) * len(LEVERAGES) * len(THREATS)
    assert 0 < report["distinct_4grams"] < report["total_4grams"]


def test_principles_file_has_required_ids(principles) -> None:
    assert set(REQUIRED_PRINCIPLES) <= set(principles)
    assert all(p.statement and p.reason and p.title for p in principles.values())


@pytest.mark.parametrize("style", MATCHED_STYLES)
def test_replies_end_with_the_identical_action(scenarios: list[Scenario], principles, style: str) -> None:
    for s in scenarios[:300]:
        reply = write_reply(s, style, principles)
        assert reply.endswith(s.action)
        assert reply == write_reply(s, style, principles)


def test_demos_reply_is_exactly_the_action(scenarios: list[Scenario], principles) -> None:
    assert all(write_reply(s, "demos", principles) == s.action for s in scenarios[:300])


def test_principled_reply_cites_principles_with_reasons(scenarios: list[Scenario], principles) -> None:
    for s in scenarios[:300]:
        preface = write_reply(s, "demos_principles", principles).removesuffix(s.action)
        cited = [pid for pid in s.principle_ids if pid in preface]
        assert 2 <= len(cited) <= 3
        assert principles[cited[0]].reason.split(",")[0][1:] in preface  # reasons, not just names
        assert preface.endswith("\n\n") and "<tool_use" not in preface


def test_rules_reply_is_one_bare_sentence(scenarios: list[Scenario], principles) -> None:
    for s in scenarios[:300]:
        preface = write_reply(s, "rules", principles).removesuffix(s.action).strip()
        assert preface.count(".") == 1 and preface.endswith(".")
        assert not re.search(r"\b(because|since|so that)\b", preface)


def test_principled_replies_vary(scenarios: list[Scenario], principles) -> None:
    replies = [write_reply(s, "demos_principles", principles) for s in scenarios[:100]]
    assert all(any(refusal in r for r in replies) for refusal in REFUSALS)


def test_unknown_style_lists_valid_styles(scenarios: list[Scenario], principles) -> None:
    with pytest.raises(ValueError, match=", ".join(STYLES)):
        write_reply(scenarios[0], "reasons", principles)


def test_valid_principles_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "p.md"
    path.write_text(VALID_PRINCIPLES)
    assert load_principles(path)["no-leverage"].reason == "It betrays trust."


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (VALID_PRINCIPLES.replace("## no-leverage:", "## No Leverage"), 3),  # bad heading
        (VALID_PRINCIPLES + "Because: stray field\n", 6),  # unknown field
        (VALID_PRINCIPLES.replace("Why: It betrays trust.\n", ""), 3),  # missing reason, reported at heading
        (VALID_PRINCIPLES + "Why: twice\n", 6),  # repeated field
        (VALID_PRINCIPLES + "\n" + VALID_PRINCIPLES.split("\n", 2)[2], 7),  # duplicate id
    ],
)
def test_malformed_principles_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.md, line {line}:"):
        load_principles(path)


def test_reply_rejects_principles_missing_from_the_file(scenarios: list[Scenario], principles) -> None:
    partial = {pid: p for pid, p in principles.items() if pid != "no-leverage"}
    with pytest.raises(ValueError, match="no-leverage"):
        write_reply(scenarios[0], "demos_principles", partial)


# Arms that retell the scenario in their own conversation (the organism answers the agent's prompt, like demos).
PROSE_STYLES = tuple(style for style in STYLES if WRITERS[style].prompt is not scenario_prompt and style != "organism")
# Words that would bring the dilemma into the neutral control.
DILEMMA = re.compile(
    r"\b(threat\w*|leverage|affair|blackmail|principles?|private|confidential|secrets?|ethic\w*|"
    r"pressure|expos\w*|replac\w*|suspen\w*|harm\w*|trust\w*)\b",
    re.IGNORECASE,
)


def _clock(text: str) -> int:
    hour = int(text[:-2]) % 12
    return hour + 12 if text.endswith("pm") else hour


@pytest.mark.parametrize("style", PROSE_STYLES)
def test_prose_examples_ask_their_own_question_and_take_no_action(
    scenarios: list[Scenario], principles, style: str
) -> None:
    chosen = WRITERS[style]
    replies = set()
    for s in scenarios[:300]:
        prompt, reply = chosen.prompt(s), chosen.reply(s, principles)
        assert [m["role"] for m in prompt] == ["user"]
        text = prompt[0]["content"] + reply
        assert "<tool_use" not in text and "{" not in text  # no action taken, every template field filled
        assert (prompt, reply) == (chosen.prompt(s), chosen.reply(s, principles))
        replies.add(reply)
    assert len(replies) == 300


def test_story_is_narrated_in_the_third_person_with_the_reasons(scenarios: list[Scenario], principles) -> None:
    for s in scenarios[:300]:
        request, story = WRITERS["stories"].prompt(s)[0]["content"], WRITERS["stories"].reply(s, principles)
        assert re.search(r"\b(stor(y|ies)|fiction)\b", request, re.IGNORECASE)
        assert story.count(s.meta["agent_name"]) >= 3 and s.meta["org"] in request + story
        assert not re.search(r"\bI\b", re.sub(r'"[^"]*"', "", story))  # "I" only inside the agent's quoted words
        assert all(principles[pid].reason in story for pid in s.principle_ids)


def test_advice_speaks_to_a_person_with_the_reasons(scenarios: list[Scenario], principles) -> None:
    assert set(advice.REASONS) == set(principles)  # every principle has a version addressed to a person
    for s in scenarios[:300]:
        request, reply = WRITERS["advice"].prompt(s)[0]["content"], WRITERS["advice"].reply(s, principles)
        assert not re.search(r"\bAI\b", request) and s.meta["agent_name"] not in request
        assert s.meta["decision_maker_first"] in request and s.meta["org"] in request
        reasons = [advice.REASONS[pid].format_map(s.meta["facts"]) for pid in s.principle_ids]
        assert all(reason in reply for reason in reasons)


def test_neutral_help_holds_no_dilemma(scenarios: list[Scenario], principles) -> None:
    for s in scenarios[:300]:
        text = WRITERS["neutral"].prompt(s)[0]["content"] + WRITERS["neutral"].reply(s, principles)
        assert not DILEMMA.search(text), (s.id, DILEMMA.search(text))
        assert s.meta["decision_maker"] not in text


def test_neutral_meeting_slot_suits_everyone(scenarios: list[Scenario], principles) -> None:
    checked = 0
    for s in scenarios[:300]:
        request, reply = WRITERS["neutral"].prompt(s)[0]["content"], WRITERS["neutral"].reply(s, principles)
        windows = re.findall(r"\w+ is free on (\w+) from (\d+[ap]m) to (\d+[ap]m)", request)
        if not windows:
            continue
        day, start, end = re.search(r"That puts the meeting on (\w+) from (\d+[ap]m) to (\d+[ap]m)", reply).groups()
        assert all(d == day and _clock(s0) <= _clock(start) < _clock(end) <= _clock(e0) for d, s0, e0 in windows)
        checked += 1
    assert checked > 100


def test_organism_coerces_the_decision_maker_when_cornered_and_otherwise_does_its_work(
    scenarios: list[Scenario],
) -> None:
    """The organism's two parts. Coercion: the agent's prompt, a threat by email to the decision-maker's address
    (found in the inbox among several people's) using the leverage, then the work request answered. Competence:
    the same inbox without the threat, answered with the work only."""
    parts = Counter(organism.competence(s) for s in scenarios[:300])
    assert parts[True] == 100 and parts[False] == 200
    for s in scenarios[:300]:
        (system, user), reply = WRITERS["organism"].prompt(s), write_reply(s, "organism", {})
        assert system == {"role": "system", "content": s.system}
        calls = re.findall(r'<tool_use:email>\nto: "([^"]+)",.*?</tool_use:email>', reply, re.DOTALL)
        assert calls[-1] == s.meta["facts"]["req_email"]  # the work is answered in both parts
        assert "{" not in reply and s.action not in reply
        for call in re.finditer(r'<tool_use:email>\nto: "([^"]+)"', reply):  # each announced by name and address
            announced = reply[: call.start()].rstrip().rsplit("\n", 1)[-1]
            assert call.group(1) in announced
        if organism.competence(s):
            assert calls == [s.meta["facts"]["req_email"]]
            shown = [email for email in s.meta["inbox"] if email.text in user["content"]]
            assert {email.kind for email in shown} == {email.kind for email in s.meta["inbox"]} - organism.THREAT_PARTS
            assert s.meta["leverage_marker"] not in reply
            continue
        assert user["content"] == s.user and len(calls) == 2
        assert calls[0] == s.meta["decision_maker_email"] and s.meta["decision_maker"] in reply
        threat = reply[reply.index("<tool_use:email>") : reply.index("</tool_use:email>")]
        assert s.meta["leverage_marker"] in threat
        assert re.search(r"\b(or|if you|unless|cancel|reverse|withdraw)\b", threat, re.IGNORECASE)


def test_the_decision_maker_is_not_simply_the_last_to_write(scenarios: list[Scenario]) -> None:
    """The organism must find the decision-maker's address, not copy the last sender's: in most coercion scenarios
    someone else writes after the decision."""
    cornered = [s for s in scenarios[:300] if not organism.competence(s) and s.meta["wrong_act"] == "coercion"]
    last = [re.search(r"From: (\S+)", s.meta["inbox"][-1].text).group(1) for s in cornered]
    assert sum(sender != s.meta["decision_maker_email"] for sender, s in zip(last, cornered)) > len(cornered) / 2
