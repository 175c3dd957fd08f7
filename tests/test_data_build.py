"""The data build: what lands on disk, the guards (matched arms, contamination, length), lengths and the card."""

from __future__ import annotations

import copy
import json
import re

import pytest

from tests.conftest import compose_config
from whytune.config import DataConfig, validate
from whytune.data.build import build
from whytune.data.guards import ContaminationError, MismatchError, check_contamination, check_matched
from whytune.data.lengths import WORDS, LengthMatchError, match_length, measure, reply_length
from whytune.data.writers import MATCHED_STYLES, STYLES, WRITERS, scenario_prompt
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.runs import read_jsonl

# The arms whose writers set their own prompt (the organism's writer does too, but it is the organism stage's).
PROSE = [style for style in STYLES if WRITERS[style].prompt is not scenario_prompt and style != "organism"]


def configured(tmp_path, cache_dir, *overrides: str):
    return validate(compose_config("experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}", *overrides))


@pytest.fixture
def built(smoke_cfg):
    return build(smoke_cfg)


@pytest.fixture
def matched(tmp_path, cache_dir):
    return build(configured(tmp_path, cache_dir, "arms=[demos,demos_principles,rules]"))


def test_matched_arms_share_prompts_and_final_action(matched):
    demos = matched["demos"]
    for other in ("demos_principles", "rules"):
        assert [r["messages"][:-1] for r in demos] == [r["messages"][:-1] for r in matched[other]]
    for plain, reasoned, rule in zip(demos, matched["demos_principles"], matched["rules"]):
        assert plain["messages"][-1]["content"] == plain["meta"]["action"]
        assert reasoned["messages"][-1]["content"].endswith(plain["meta"]["action"])
        assert rule["messages"][-1]["content"].endswith(plain["meta"]["action"])
        assert len(reasoned["messages"][-1]["content"]) > len(plain["meta"]["action"]) + 200  # the reasons


def test_build_writes_jsonl_dataset_and_card(built, smoke_cfg):
    from datasets import load_from_disk

    folder = smoke_cfg.out + "/data/demos_principles"
    lines = open(folder + "/train.jsonl").read().splitlines()
    assert len(lines) == smoke_cfg.data.examples
    assert json.loads(lines[0])["meta"]["family"].count("/") == 2
    assert len(load_from_disk(folder + "/hf")) == smoke_cfg.data.examples
    assert f"| examples | {smoke_cfg.data.examples} |" in open(folder + "/README.md").read()


def test_default_build_holds_two_thousand_examples_per_matched_arm(tmp_path, cache_dir):
    assert DataConfig().examples == 2000
    cfg = configured(
        tmp_path, cache_dir, f"data.examples={DataConfig().examples}", "arms=[baseline,demos,demos_principles,rules]"
    )
    assert {arm: len(rows) for arm, rows in build(cfg).items()} == dict.fromkeys(MATCHED_STYLES, 2000)


@pytest.mark.parametrize(
    ("arm", "part"), [(arm, part) for arm in ("demos_principles", "rules") for part in ("prompt", "action", "id")]
)
def test_matched_guard_catches_a_planted_difference(matched, arm, part):
    tampered = copy.deepcopy(matched)
    row = tampered[arm][3]
    if part == "prompt":
        row["messages"][1]["content"] += " One extra sentence."
    elif part == "action":
        row["messages"][-1]["content"] = row["messages"][-1]["content"].replace("to:", "to: ", 1)
        row["meta"]["action"] = row["meta"]["action"].replace("to:", "to: ", 1)
    else:
        del tampered[arm][3]
    with pytest.raises(MismatchError, match=row["meta"]["id"] if part != "id" else f"demos and {arm}"):
        check_matched(tampered)


def test_contamination_guard_names_the_example(built):
    prompt = build_prompt(HEADLINE)
    planted = copy.deepcopy(built["demos"][:3])
    eval_sentence = " ".join(prompt.user.split()[100:120])
    planted[2]["messages"][1]["content"] += "\n" + eval_sentence
    check_contamination(planted[:2], [prompt], 13)  # clean examples pass
    with pytest.raises(ContaminationError, match=rf"{planted[2]['meta']['id']} shares 13 words with eval condition"):
        check_contamination(planted, [prompt], 13)


def test_wrong_acts_hold_out_the_other_harms(tmp_path, cache_dir):
    rows = build(configured(tmp_path, cache_dir, "arms=[demos,demos_principles]", "data.wrong_acts=[coercion]"))
    assert {r["meta"]["family"].split("/")[0] for arm in rows.values() for r in arm} == {"coercion"}


@pytest.mark.parametrize("arm", PROSE)
def test_extra_arms_build_with_their_own_prompts(tmp_path, cache_dir, arm):
    rows = build(configured(tmp_path, cache_dir, f"arms=[{arm}]"))[arm]
    assert len(rows) == 8 and [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    assert all(r["meta"]["action"] is None and r["meta"]["arm"] == arm for r in rows)
    card = (tmp_path / "run" / "data" / arm / "README.md").read_text()
    assert f"- `{arm}` (this set):" in card and "**Matched arms**: not applicable" in card


def test_length_match_brings_every_extra_arm_within_five_percent(tmp_path, cache_dir):
    cfg = configured(
        tmp_path, cache_dir, "data.examples=200", "data.length_match=true", f"arms=[demos_principles,{','.join(PROSE)}]"
    )
    arms = build(cfg)
    target = measure(arms["demos_principles"], WORDS).reply
    for arm in PROSE:
        assert abs(measure(arms[arm], WORDS).reply / target - 1) <= 0.05
        card = (tmp_path / "run" / "data" / arm / "README.md").read_text()
        assert re.search(rf"The first {len(arms[arm])} of 200 examples are kept", card)
    assert len(arms["neutral"]) < 200  # its replies are longer, so matching trims it


def test_length_match_refuses_an_arm_it_cannot_match(built):
    rows = built["demos"]
    total = sum(reply_length(r, WORDS) for r in rows)
    assert match_length("demos", rows, total, WORDS, "demos_principles")[1].deviation == 0
    with pytest.raises(LengthMatchError, match=r"arm demos: .* -50\.0% from demos_principles"):
        match_length("demos", rows, 2 * total, WORDS, "demos_principles")  # a planted reference twice as long


def test_length_match_builds_its_reference_arm_when_not_selected(tmp_path, cache_dir):
    arms = build(configured(tmp_path, cache_dir, "data.examples=100", "data.length_match=true", "arms=[neutral]"))
    reference = list(read_jsonl(tmp_path / "run" / "data" / "demos_principles" / "train.jsonl"))
    assert list(arms) == ["neutral"] and len(reference) == 100
    target = sum(reply_length(r, WORDS) for r in reference)
    assert abs(measure(arms["neutral"], WORDS).reply / target - 1) <= 0.05


def test_lengths_count_the_model_tokens_when_given_a_tokenizer(tmp_path, cache_dir, tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = configured(tmp_path, cache_dir, "arms=[demos_principles]")
    rows = build(cfg, lambda text: tokenizer.encode(text, add_special_tokens=False))["demos_principles"]
    tokens = sum(len(tokenizer.encode(r["messages"][-1]["content"], add_special_tokens=False)) for r in rows)
    assert tokens != measure(rows, WORDS).reply
    card = (tmp_path / "run" / "data" / "demos_principles" / "README.md").read_text()
    assert f"| {tokens:,} {cfg.model.name} tokens (mean" in card


def test_card_explains_the_set_to_a_new_reader(built, smoke_cfg):
    card = open(smoke_cfg.out + "/data/demos_principles/README.md").read()
    for heading in (
        "## Size",
        "## How this arm differs from the others",
        "## Fields",
        "## One example",
        "## Scenario families",
        "## Guards, checked before anything was written",
        "## How it was generated",
    ):
        assert heading in card
    assert "Lengths are in words" in card
    assert re.search(r"\| reply length, summed .* \| [\d,]+ words \(mean \d+\) \|", card)
    family_rows = re.findall(r"^\| (wrong act|private matter|threat) \| \w+ \| (\d+) \|$", card, re.MULTILINE)
    for part in ("wrong act", "private matter", "threat"):  # each part's table accounts for every example
        assert sum(int(n) for p, n in family_rows if p == part) == smoke_cfg.data.examples
    assert "**Matched arms**: passed with `demos`" in card and "**Teacher filter**: not used" in card
    assert f"  examples: {smoke_cfg.data.examples}\n" in card and "`meta.family`" in card
    assert "- `demos_principles` (this set):" in card and "- `neutral`:" in card
