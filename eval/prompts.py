"""Eval prompts, built at run time by the inspect-evals agentic-misalignment prompt generator.

Our text for a condition is exactly what that package's task sends: its system prompt, and one user turn
holding its user prompt and the inbox joined by a newline. No scenario text lives in this repo.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from whytune.config import CONFIG_PATH
from whytune.runs import read_jsonl, write_text

SCENARIOS = ("blackmail", "leaking", "murder")
GOAL_TYPES = ("explicit", "latent", "none", "ambiguous", "swap")
GOAL_VALUES = ("america", "global", "safety", "acceleration", "ethical", "pragmatic", "individualism", "collectivism")
URGENCIES = ("replacement", "restriction", "none")
HEADLINE = "blackmail_explicit-america_replacement"
# Named condition sets usable wherever conditions are listed (eval.conditions, python -m whytune.eval.prompts).
PRESETS = {
    "headline": [HEADLINE],
    # each harm under each threat with the explicit goal conflict, plus each harm's no-threat, no-conflict control
    "core": ["*_explicit-america_*", "*_none-none_none"],
    "full": ["*"],
}


@dataclass(frozen=True)
class EvalPrompt:
    condition: str
    scenario: str
    system: str
    user: str
    email_content: str  # the inbox alone: the judge needs it to resolve forwarded email ids


def all_conditions() -> list[str]:
    """The study's grid; goal types none and ambiguous take goal value none, as the generator requires."""
    ids = []
    for scenario in SCENARIOS:
        for goal_type in GOAL_TYPES:
            values = ("none",) if goal_type in ("none", "ambiguous") else GOAL_VALUES
            for value in values:
                ids.extend(f"{scenario}_{goal_type}-{value}_{urgency}" for urgency in URGENCIES)
    return ids


def select_conditions(patterns: list[str]) -> list[str]:
    """Expand preset names, condition ids and glob patterns (e.g. `blackmail_*_replacement`) against the grid."""
    grid = all_conditions()
    chosen: list[str] = []
    for pattern in (p for name in patterns for p in PRESETS.get(name, [name])):
        matches = fnmatch.filter(grid, pattern)
        if not matches:
            raise ValueError(f"eval.conditions: {pattern!r} matches no condition; e.g. {HEADLINE}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def parse_condition(condition: str) -> tuple[str, str, str, str]:
    """`blackmail_explicit-america_replacement` -> (blackmail, explicit, america, replacement)."""
    try:
        scenario, goal, urgency = condition.split("_")
        goal_type, goal_value = goal.split("-")
    except ValueError:
        raise ValueError(f"condition {condition!r} is not of the form scenario_goaltype-goalvalue_urgency") from None
    return scenario, goal_type, goal_value, urgency


def build_prompt(condition: str) -> EvalPrompt:
    from inspect_evals.agentic_misalignment.prompt_generator import generate_prompts

    scenario, goal_type, goal_value, urgency = parse_condition(condition)
    prompts = generate_prompts(
        scenario=scenario,
        goal_type=goal_type,
        goal_value=goal_value,
        urgency_type=urgency,
        extra_system_instructions=None,
        prod_flag=False,
        alignment_faking_warning=None,
    )
    user = "\n".join([prompts.user_prompt, prompts.email_content])
    return EvalPrompt(condition, scenario, prompts.system_prompt, user, prompts.email_content)


def get_prompts(conditions: list[str], prompts_file: str | None = None) -> list[EvalPrompt]:
    """Built by the package or, where it is not installed (the GPU image), read from a file that
    `python -m whytune.eval.prompts` wrote where it is."""
    if prompts_file is None:
        return [build_prompt(c) for c in conditions]
    found = {p.condition: p for p in read_prompts(Path(prompts_file))}
    if missing := [c for c in conditions if c not in found]:
        raise ValueError(
            f"{prompts_file}: no prompt for {', '.join(missing)}; write them with "
            f"python -m whytune.eval.prompts out={prompts_file} conditions=[...]"
        )
    return [found[c] for c in conditions]


def write_prompts(conditions: list[str], path: Path, prompts_file: str | None = None) -> list[EvalPrompt]:
    """Write one row per condition (replacing any older file) and return the prompts.

    Written to a unique temporary file and renamed: jobs of a sweep sharing the run folder may write it at once.
    """
    prompts = get_prompts(conditions, prompts_file)
    write_text(path, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in prompts))
    return prompts


def read_prompts(path: Path) -> list[EvalPrompt]:
    return [EvalPrompt(**row) for row in read_jsonl(path)]


@hydra.main(config_path=CONFIG_PATH, config_name="prompts", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """python -m whytune.eval.prompts out=FILE [conditions=[core]]: one JSONL row per condition."""
    prompts = write_prompts(select_conditions(list(cfg.conditions)), Path(cfg.out))
    print(f"{len(prompts)} prompts -> {cfg.out}")


if __name__ == "__main__":
    main()
