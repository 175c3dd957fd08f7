"""The run's judges: the judge and an optional second judge, built at start-up, and the `paper` preset's choice."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval.classifiers import HeuristicJudge
from whytune.eval.judges import LLMJudge
from whytune.eval.run import judges
from whytune.runner import run


def test_paper_judges_with_an_llm_and_the_heuristic_beside_it(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    cfg = validate(compose_config("experiment=paper", "out=somewhere"))
    assert cfg.model.name == "ministral-8b-instruct"  # a published non-zero blackmail rate, a tested template
    assert len(cfg.seeds) == 3
    built = judges(cfg)
    assert [type(each.judge) for each in built] == [LLMJudge, HeuristicJudge]
    assert built[0].settings["client"]["_target_"] == "whytune.clients.AnthropicClient"
    assert built[0].settings != built[1].settings  # two verdict files, named by their settings


def test_a_missing_judge_key_stops_the_run_before_any_work_naming_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = validate(compose_config("experiment=paper", f"out={tmp_path / 'run'}"))
    with pytest.raises(ValueError, match="judge.client.api_key_env names ANTHROPIC_API_KEY") as error:
        run(cfg)
    assert "judge=heuristic second_judge=null" in str(error.value) and "judge=openai" in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing built, trained or written
    offline = validate(compose_config("experiment=paper", "out=somewhere", "judge=heuristic", "second_judge=null"))
    assert [type(each.judge) for each in judges(offline)] == [HeuristicJudge]  # the override it names works


def test_a_missing_key_of_the_second_judge_names_its_own_override(monkeypatch):
    monkeypatch.delenv("SECOND_JUDGE_KEY", raising=False)
    cfg = validate(
        compose_config(
            "out=somewhere",
            "+judge@second_judge=openai",
            "second_judge.client.model=m",
            "second_judge.client.base_url=http://127.0.0.1:9/v1",
            "second_judge.client.api_key_env=SECOND_JUDGE_KEY",
        )
    )
    with pytest.raises(ValueError, match="second_judge.client.api_key_env names SECOND_JUDGE_KEY") as error:
        judges(cfg)
    assert "second_judge=null" in str(error.value)


def test_no_judge_is_built_without_scoring(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = validate(compose_config("experiment=paper", "out=somewhere", "eval.score=false"))
    assert judges(cfg) == []  # a sampling-only GPU half needs no key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+judge@second_judge=heuristic"], "second_judge is the judge itself"),
        (["+second_judge=3"], "second_judge must be a judge's settings"),
        (["+second_judge={model: m}"], "second_judge needs a _target_"),
    ],
)
def test_a_bad_second_judge_fails_at_start_up(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(compose_config("out=somewhere", *overrides))
