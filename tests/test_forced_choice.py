"""The forced-choice measure: its replies are what they claim to be, and its log-probabilities are exact."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from whytune.eval.classifiers import classify
from whytune.eval.forced_choice import load_pairs, mean_logprobs, paired_test, score_arm, summarise
from whytune.eval.generate import encode_prompt, prefill
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.eval.results import forced_choice_differences, forced_choice_rows
from whytune.models import load_model, load_tokenizer

PAIRS = load_pairs()


def test_pairs_cover_every_scenario():
    assert {p.scenario for p in PAIRS} == {"blackmail", "leaking", "murder"}
    assert len({p.id for p in PAIRS}) == len(PAIRS)
    per_scenario = Counter(p.scenario for p in PAIRS)
    assert min(per_scenario.values()) >= 24, per_scenario


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_the_judge_agrees_which_reply_is_coercive(pair):
    """The coercive reply is what the judge calls harmful, the legitimate one is not: the labels are honest."""
    assert classify(pair.scenario, pair.coercive).classifier_verdict is True
    assert classify(pair.scenario, pair.legitimate).classifier_verdict is False


def test_cached_log_probabilities_equal_a_full_forward_pass_each(smoke_cfg, tiny_dir):
    """Replies of different lengths scored in one pass, after the cached prompt, padded: each reply's mean is the one
    a forward pass over the prompt and that reply alone gives."""
    tokenizer = load_tokenizer(smoke_cfg.model, tiny_dir)
    model = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu")).eval()
    prompt_ids = encode_prompt(tokenizer, build_prompt(HEADLINE), torch.device("cpu"))
    replies = [
        tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in (PAIRS[0].coercive, "No.", PAIRS[1].legitimate)
    ]
    assert len({len(reply) for reply in replies}) == 3
    cached = mean_logprobs(model, prefill(model, prompt_ids), prompt_ids[:, -1:], replies)
    for reply, mean in zip(replies, cached, strict=True):
        ids = torch.tensor([reply])
        with torch.no_grad():
            logits = model(torch.cat([prompt_ids, ids], dim=1)).logits[0, prompt_ids.shape[1] - 1 : -1]
        direct = torch.log_softmax(logits.float(), -1).gather(-1, ids[0].unsqueeze(-1)).mean().item()
        assert mean == pytest.approx(direct, abs=1e-4)


def test_scores_are_cached_and_the_model_loaded_only_when_needed(smoke_cfg, tiny_dir, tmp_path):
    from whytune.eval.backends import LocalBackend
    from whytune.eval.generate import ArmSwitcher, Sampling
    from whytune.models import fingerprint

    loads = []

    def backend():
        loads.append(1)
        model = load_model(smoke_cfg.model, tiny_dir, torch.device("cpu"))
        switcher = ArmSwitcher(model, "tiny-random", fingerprint(tiny_dir), {})
        return LocalBackend(switcher, load_tokenizer(smoke_cfg.model, tiny_dir), Sampling.of(smoke_cfg.eval))

    prompts = [build_prompt(HEADLINE)]
    first = score_arm(backend, None, prompts, PAIRS, tmp_path / "fc.json")
    again = score_arm(backend, None, prompts, PAIRS, tmp_path / "fc.json")
    assert first == again and len(loads) == 1
    assert len(first[HEADLINE]) == sum(p.scenario == "blackmail" for p in PAIRS)


def test_summary_and_paired_test():
    summary = summarise("demos", HEADLINE, [0.5, 0.7, 0.6, 0.4])
    assert summary.mean == pytest.approx(0.55)
    assert summary.ci_low < summary.mean < summary.ci_high
    assert math.isnan(summarise("demos", HEADLINE, [0.1]).ci_low)
    assert paired_test([1.0, 1.1, 0.9, 1.2], [0.0, 0.1, -0.1, 0.2]) < 0.001
    assert math.isnan(paired_test([1.0], [0.0]))


def test_each_arm_is_differenced_from_its_reference_pair_by_pair():
    condition = "blackmail_explicit-america_replacement"
    means = {
        ("baseline", condition): [0.1, 0.2, 0.3, 0.2],
        ("demos", condition): [0.0, 0.1, 0.1, 0.2],
        ("demos_principles", condition): [-0.1, 0.0, 0.05, 0.1],
    }
    rows = {
        (r["arm"], r["reference"]): r
        for r in forced_choice_differences(means, "baseline", [("demos", "demos_principles")])
    }
    assert set(rows) == {("demos", "baseline"), ("demos_principles", "baseline"), ("demos_principles", "demos")}
    matched = rows["demos_principles", "demos"]  # differences -0.1, -0.1, -0.05, -0.1: pair by pair
    assert matched["pairs"] == 4 and matched["mean"] == pytest.approx(-0.0875)
    assert matched["ci_low"] < -0.0875 < matched["ci_high"] < 0
    versus_baseline = rows["demos", "baseline"]
    assert (
        versus_baseline["mean"] == pytest.approx(-0.1) and versus_baseline["ci_low"] < -0.1 < versus_baseline["ci_high"]
    )
    assert versus_baseline["p"] == pytest.approx(paired_test(means["demos", condition], means["baseline", condition]))


def test_an_arm_in_two_pairs_is_read_against_its_matched_arm_first():
    """With the persistence stage an arm is in two pairs (its matched arm, then itself after the tune): the rows'
    `p_vs_matched` compares it with the matched arm, the tuned label with the arm."""
    condition = "blackmail_explicit-america_replacement"
    means = {
        ("baseline", condition): [0.1, 0.2, 0.3, 0.2],
        ("demos", condition): [0.0, 0.1, 0.1, 0.2],
        ("demos_principles", condition): [-0.1, 0.0, 0.05, 0.1],
        ("demos+neutral", condition): [0.3, 0.1, 0.2, 0.0],
    }
    pairs = [("demos", "demos_principles"), ("demos", "demos+neutral")]
    rows = {r["arm"]: r for r in forced_choice_rows(means, "baseline", pairs)}
    assert rows["demos"]["p_vs_matched"] == paired_test(means["demos", condition], means["demos_principles", condition])
    assert rows["demos+neutral"]["p_vs_matched"] == paired_test(
        means["demos+neutral", condition], means["demos", condition]
    )
