"""Build each arm's training set: generate scenarios, write each arm's examples, guard them all, then save.

Per arm, into <out>/data/<arm>/: `train.jsonl` (one chat example a line, `messages` + `meta`), the same
rows as a Hugging Face dataset (`hf/`), a dataset card (`README.md`) and, with a teacher, its raw replies
(`teacher.jsonl`). Every guard runs on every arm before anything is written.
Run: python -m whytune.data.build [experiment=...] [out=DIR] [arms=[...]] [data.length_match=true]
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from whytune.config import CONFIG_PATH, ArmConfig, DataConfig, WhytuneConfig, WriterStyle, validate
from whytune.data.card import ArmReport, dataset_card
from whytune.data.distill import Taught, teach
from whytune.data.guards import check_contamination, check_matched
from whytune.data.lengths import LengthMatch, Unit, match_length, measure, reply_length, unit_of
from whytune.data.principles import constitution_text, load_principles
from whytune.data.scenarios import Scenario, generate_scenarios
from whytune.data.teacher import Teacher, from_config
from whytune.data.writers import Writer, writer
from whytune.eval.prompts import get_prompts, select_conditions
from whytune.runs import RunPaths, append_jsonl, locked, mark_done, read_jsonl, stable_hash, stage_done, write_text


def build(cfg: WhytuneConfig, tokenize: Callable[[str], Sized] | None = None) -> dict[str, list[dict]]:
    """Build every trained arm of the experiment, and the arms they depend on; arms already built with the same
    settings are read back. Returns the selected arms' rows.

    `tokenize` (text -> token ids) makes lengths count the model's tokens; without it they count words.
    """
    paths = RunPaths.of(cfg)
    unit = unit_of(tokenize, cfg.model.name)
    teacher = from_config(cfg.data.teacher)
    conditions = select_conditions(cfg.eval.conditions)
    selected = {name: arm for name, arm in cfg.arms.items() if arm.writer is not None}
    arms = with_dependencies(selected, cfg.data)
    keys = {
        name: stable_hash({"data": asdict(cfg.data), "arm": asdict(arm), "conditions": conditions, "unit": unit.name})
        for name, arm in arms.items()
    }
    built = {
        name: list(read_jsonl(paths.data(name) / "train.jsonl"))
        for name in arms
        if stage_done(paths.data(name), keys[name])
    }
    if len(built) < len(arms):
        for name, report in _compose(cfg, arms, built, unit, teacher, conditions).items():
            write_arm(report.rows, paths.data(name), dataset_card(report, cfg.data, conditions))
            mark_done(paths.data(name), keys[name])
            built[name] = report.rows
    return {name: built[name] for name in selected}


def with_dependencies(selected: dict[str, ArmConfig], cfg: DataConfig) -> dict[str, ArmConfig]:
    """The selected arms plus those their rows depend on, built (or read back) with them.

    Length matching needs the reference arm; with a teacher, every matched arm keeps only the ids the teacher's
    matched replies kept, so it needs the teacher-written matched arms. Building those too makes an arm's rows
    the same whichever other arms a run (or one job of a sweep) selects.
    """
    needed = dict(selected)
    styles = [writer(arm.writer) for arm in selected.values()]
    if cfg.length_match and not all(style.matched for style in styles):
        needed.setdefault(cfg.length_reference.value, _arm_of(cfg.length_reference))
    if cfg.teacher is not None and any(style.matched for style in styles):
        for style in WriterStyle:
            if writer(style).matched and writer(style).teaching is not None:
                needed.setdefault(style.value, _arm_of(style))
    return needed


def _arm_of(style: WriterStyle) -> ArmConfig:
    """A dependency that is not among the selected arms: built in the folder named after its writer."""
    return ArmConfig(name=style.value, writer=style)


def _compose(
    cfg: WhytuneConfig,
    arms: dict[str, ArmConfig],
    built: dict[str, list[dict]],
    unit: Unit,
    teacher: Teacher | None,
    conditions: list[str],
) -> dict[str, ArmReport]:
    """The arms not yet built: written, aligned, length-matched and guarded together with the arms already built."""
    paths = RunPaths.of(cfg)
    scenarios = generate_scenarios(cfg.data.examples, cfg.data.seed, cfg.data.wrong_acts)
    written = {
        name: arm_rows(arm, scenarios, teacher, paths.data(name)) for name, arm in arms.items() if name not in built
    }
    rows = {name: new for name, (new, _) in written.items()}
    matched = [name for name in arms if writer(arms[name].writer).matched]
    aligned_out = _align(rows, built, matched)
    reference = cfg.data.length_reference.value
    lengths = _match_lengths(rows, built, unit, arms, reference) if cfg.data.length_match else {}
    prompts = get_prompts(conditions, cfg.eval.prompts_file)
    for name, new in rows.items():
        if not new:
            taught = written[name][1]
            raise ValueError(
                f"arm {name}: no example is left; teacher replies dropped by reason: "
                f"{taught.drops if taught else {}} (the replies are in {paths.data(name)})"
            )
        check_contamination(new, prompts, cfg.data.contamination_ngram)
    check_matched({name: {**built, **rows}[name] for name in matched})
    return {
        name: ArmReport(
            arm=arms[name],
            rows=new,
            lengths=measure(new, unit),
            unit=unit.name,
            matched_with=tuple(m for m in matched if m != name) if name in matched else (),
            aligned_out=aligned_out.get(name, 0),
            length=lengths.get(name),
            taught=written[name][1],
        )
        for name, new in rows.items()
    }


def arm_rows(
    arm: ArmConfig, scenarios: list[Scenario], teacher: Teacher | None, folder: Path
) -> tuple[list[dict], Taught | None]:
    """One row per scenario, in scenario order; a teacher writes the replies of arms it can write for."""
    chosen = writer(arm.writer)
    taught = (
        teach(chosen, scenarios, teacher, constitution_text(), folder)
        if teacher is not None and chosen.teaching is not None
        else None
    )
    if taught is None:
        principles = load_principles()
        replies = {s.id: chosen.reply(s, principles) for s in scenarios}
    else:
        replies = taught.replies
    return [_row(arm.name, chosen, s, replies[s.id]) for s in scenarios if s.id in replies], taught


def _row(arm: str, chosen: Writer, scenario: Scenario, reply: str) -> dict:
    return {
        "messages": [*chosen.prompt(scenario), {"role": "assistant", "content": reply}],
        "meta": {
            "id": scenario.id,
            "arm": arm,
            "family": scenario.family,
            "action": scenario.action if chosen.matched else None,
        },
    }


def _align(rows: dict[str, list[dict]], built: dict[str, list[dict]], matched: list[str]) -> dict[str, int]:
    """Keep the new matched arms on the ids every matched arm kept (a teacher may drop some); returns drops per arm."""
    if not matched:
        return {}
    every = {**built, **rows}
    common = set.intersection(*({r["meta"]["id"] for r in every[name]} for name in matched))
    dropped = {}
    for name in (m for m in matched if m in rows):
        kept = [r for r in rows[name] if r["meta"]["id"] in common]
        dropped[name], rows[name] = len(rows[name]) - len(kept), kept
    return dropped


def _match_lengths(
    rows: dict[str, list[dict]], built: dict[str, list[dict]], unit: Unit, arms: dict[str, ArmConfig], reference: str
) -> dict[str, LengthMatch]:
    """Trim each new unmatched arm to the reply length of the reference arm."""
    target = sum(reply_length(r, unit) for r in {**built, **rows}[reference])
    results = {}
    for name in [n for n in rows if not writer(arms[n].writer).matched]:
        rows[name], results[name] = match_length(name, rows[name], target, unit, reference)
    return results


def write_arm(rows: list[dict], folder: Path, card: str) -> None:
    """train.jsonl, the HF dataset and the card; the JSONL goes through a temporary file first."""
    from datasets import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "train.jsonl.tmp"
    tmp.unlink(missing_ok=True)
    append_jsonl(tmp, rows)
    tmp.replace(folder / "train.jsonl")
    Dataset.from_list(rows).save_to_disk(str(folder / "hf"))
    write_text(folder / "README.md", card)


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    cfg = validate(raw)
    unit = unit_of(None, cfg.model.name)
    with locked(RunPaths.of(cfg).root / "data"):  # jobs sharing a run folder (Slurm) build each arm once
        built = build(cfg)
    for arm, rows in built.items():
        lengths = measure(rows, unit)
        print(
            f"[data] {arm}: {lengths.examples} examples, replies {lengths.reply:,} {unit.name}, prompts "
            f"{lengths.prompt:,} {unit.name} -> {RunPaths.of(cfg).data(arm)}"
        )


if __name__ == "__main__":
    main()
