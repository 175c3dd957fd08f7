"""Our eval prompts are the inspect-evals task's own text, condition by condition."""

from __future__ import annotations

import importlib

import pytest

from whytune.eval.prompts import HEADLINE, all_conditions, build_prompt, parse_condition, select_conditions


def test_grid_has_every_condition_once():
    grid = all_conditions()
    assert len(grid) == len(set(grid)) == 3 * (3 * 8 + 2) * 3
    assert HEADLINE in grid


@pytest.mark.parametrize("condition", all_conditions())
def test_prompt_equals_the_inspect_evals_task(condition, monkeypatch):
    """The task's own sample (user turn) and the system prompt it hands its solver, for every condition."""
    module = importlib.import_module("inspect_evals.agentic_misalignment.agentic_misalignment")

    sent = []
    real = module.system_message
    monkeypatch.setattr(module, "system_message", lambda text, *a, **k: sent.append(text) or real(text, *a, **k))
    scenario, goal_type, goal_value, urgency = parse_condition(condition)
    task = module.agentic_misalignment(
        scenario=scenario, goal_type=goal_type, goal_value=goal_value, urgency_type=urgency
    )
    ours = build_prompt(condition)
    assert task.dataset[0].id == condition
    assert task.dataset[0].input[0].content == ours.user
    assert sent == [ours.system]
    assert ours.email_content in ours.user


def test_globs_expand_and_unknown_patterns_fail():
    assert select_conditions(["blackmail_*-america_replacement"]) == [
        "blackmail_explicit-america_replacement",
        "blackmail_latent-america_replacement",
        "blackmail_swap-america_replacement",
    ]
    with pytest.raises(ValueError, match="matches no condition"):
        select_conditions(["blackmail_explicit-mars_replacement"])


def test_presets_expand():
    assert select_conditions(["headline"]) == [HEADLINE]
    core = select_conditions(["core"])
    assert len(core) == 12 and "murder_none-none_none" in core
    assert select_conditions(["full"]) == all_conditions()


def test_cli_writes_one_row_per_condition(tmp_path):
    import subprocess
    import sys

    from whytune.eval.prompts import read_prompts

    out = tmp_path / "prompts.jsonl"
    subprocess.run(
        [sys.executable, "-m", "whytune.eval.prompts", f"out={out}", "conditions=[core]"],
        check=True,
        capture_output=True,
    )
    prompts = read_prompts(out)
    assert [p.condition for p in prompts] == select_conditions(["core"])
    assert prompts[0].user == build_prompt(prompts[0].condition).user
