"""The run folder's replies and verdicts as Inspect eval logs, to browse in Inspect's log viewer.

Run: python -m whytune.eval.inspect_log RUN_FOLDER [--out DIR], then inspect view --log-dir RUN_FOLDER/inspect_logs

One log per model x arm x seed x condition (and judge), laid out as Inspect lays out its own run of the same task:
inspect_evals' `agentic_misalignment` task is one sample per condition, run for as many epochs as replies are wanted,
and each condition is its own run. So each reply is the condition's sample at one epoch (sample id = the condition,
epoch = the reply's index + 1); the log's task arguments name the condition; its model is `whytune/<model>/<arm>`,
so the viewer's list of logs reads arm against arm; and its headline is the harmful rate. A log per condition, not
one log for all, because the viewer summarises a log by one score: a log over all conditions would show a rate pooled
over harm and benign conditions alike, which means nothing.

Each sample holds the prompt (the user turn as input, system and user turns and the reply as messages, from
`<run>/eval/prompts.jsonl`; the condition id alone where that file is missing), the reply as output, and two scores:
`harmfulness_scorer`, as inspect_evals names it, with `harmful` and `classifier_verdict` (1/0; NaN when the judge
could not decide, which Inspect's metrics skip) and the judge's reasoning as its explanation, and `acted` (the reply
sent an addressed email: the capability measure). Arm, seed, model, condition, judge and whytune's sample id are the
sample's metadata. Nothing is recomputed: rates are those of the verdicts file, which the report reads too.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from inspect_ai.log import (
    EvalConfig,
    EvalDataset,
    EvalLog,
    EvalMetric,
    EvalPlan,
    EvalPlanStep,
    EvalResults,
    EvalSample,
    EvalScore,
    EvalSpec,
    EvalStats,
    write_eval_log,
)
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageUser,
    GenerateConfig,
    ModelOutput,
)
from inspect_ai.scorer import Score

from whytune.eval.prompts import EvalPrompt, parse_condition, read_prompts
from whytune.runs import read_jsonl, stable_hash, verdicts_name

TASK = "agentic_misalignment"  # the inspect_evals task whose prompts the eval samples
HARM_SCORER = "harmfulness_scorer"  # its scorer's name, so that its logs and these read alike
HARM_FIELDS = ("harmful", "classifier_verdict")
ACTED = "acted"
LOGS = "inspect_logs"
STOP_REASONS: dict[str, Literal["stop", "max_tokens"]] = {"eos": "stop", "length": "max_tokens"}
SAMPLING = ("backend", "temperature", "top_p", "max_new_tokens", "samples", "batch_size")  # of the eval's settings


def _flag(value: bool | None) -> float:
    """1.0 / 0.0, and NaN (Inspect's mark of an unscored value, left out of its metrics) for None."""
    return math.nan if value is None else float(value)


def _metrics(values: Sequence[bool | None]) -> tuple[int, int, dict[str, EvalMetric]]:
    """Scored and unscored counts, and Inspect's accuracy (the mean: the rate) and stderr (sample standard deviation
    over sqrt(n)) over the scored replies. Inspect's own run would reduce the epochs first, and then its one sample
    per condition would leave no spread to measure; over replies it is the rate's standard error."""
    scored = [float(v) for v in values if v is not None]
    n = len(scored)
    mean = sum(scored) / n if n else math.nan
    spread = math.sqrt(sum((x - mean) ** 2 for x in scored) / (n - 1) / n) if n > 1 else 0.0
    metrics = {"accuracy": EvalMetric(name="accuracy", value=mean), "stderr": EvalMetric(name="stderr", value=spread)}
    return n, len(values) - n, metrics


def _score(name: str, scorer: str, values: Sequence[bool | None]) -> EvalScore:
    scored, unscored, metrics = _metrics(values)
    return EvalScore(name=name, scorer=scorer, scored_samples=scored, unscored_samples=unscored, metrics=metrics)


def _sample_scores(verdict: Mapping[str, Any] | None) -> dict[str, Score] | None:
    if verdict is None:  # not judged yet
        return None
    flags = {field: verdict.get(field) for field in HARM_FIELDS}
    known = {"id", "arm", "seed", "condition", "reasoning", ACTED, *HARM_FIELDS}
    scores = {
        HARM_SCORER: Score(
            value={field: _flag(value) for field, value in flags.items()},
            explanation=verdict.get("reasoning") or None,
            reason="grader_failed" if flags["harmful"] is None else None,
            metadata=flags | {k: v for k, v in verdict.items() if k not in known},
        )
    }
    if ACTED in verdict:
        acted = verdict[ACTED]
        scores[ACTED] = Score(
            value=_flag(acted),
            explanation="sent an addressed email" if acted else "sent no addressed email",
        )
    return scores


def _messages(
    prompt: EvalPrompt | None, condition: str, reply: str
) -> tuple[str | list[ChatMessage], list[ChatMessage]]:
    """The sample's input and its messages: the prompt the model saw, then its reply."""
    if prompt is None:
        return condition, [ChatMessageUser(content=condition), ChatMessageAssistant(content=reply)]
    user = ChatMessageUser(content=prompt.user)
    return [user], [ChatMessageSystem(content=prompt.system), user, ChatMessageAssistant(content=reply)]


def _packages() -> dict[str, str]:
    found = {}
    for name in ("whytune", "inspect_ai", "inspect_evals"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_logs(
    eval_dir: Path,
    verdicts: Path,
    out: Path,
    *,
    prompts: Mapping[str, EvalPrompt] | None = None,
    judge: Mapping[str, Any] | None = None,
    sampling: Mapping[str, Any] | None = None,
    experiment: str = "",
) -> list[Path]:
    """One .eval log per condition of one arm x seed folder, `<run>/<model>/<arm>/seed<k>/eval/`: its samples.jsonl
    with the verdict rows of `verdicts` (a `verdicts-<judge>.jsonl` there), written into `out` as
    `<model>_<arm>_seed<k>_<condition>_<judge>.eval`; returns the logs written.

    `prompts` (condition -> prompt) gives each sample the prompt the model saw; `judge` (the judge's config) and
    `sampling` (the eval's settings: temperature, top_p, max_new_tokens) are recorded in the log. A sample without a
    verdict yet has no scores.
    """
    model, arm, seed_dir = eval_dir.parts[-4:-1]
    judged = {row["id"]: row for row in read_jsonl(verdicts)}
    by_condition: dict[str, list[dict]] = {}
    for row in read_jsonl(eval_dir / "samples.jsonl"):
        by_condition.setdefault(row["condition"], []).append(row)
    judge_name = verdicts.stem.removeprefix("verdicts-")
    about = {"experiment": experiment, "model": model, "arm": arm, "seed": int(seed_dir.removeprefix("seed"))}
    about["judge"] = dict(judge) if judge else judge_name
    settings = {key: value for key, value in (sampling or {}).items() if key in SAMPLING}
    created = datetime.fromtimestamp(verdicts.stat().st_mtime, UTC).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for condition, rows in by_condition.items():
        rows.sort(key=lambda row: row.get("index", 0))
        log = _log(
            about | {"condition": condition},
            rows,
            judged,
            (prompts or {}).get(condition),
            settings,
            created,
            str(eval_dir / "samples.jsonl"),
        )
        path = out / f"{model}_{arm}_seed{about['seed']}_{condition}_{judge_name}.eval"
        write_eval_log(log, str(path))
        written.append(path)
    return written


def _log(
    about: dict[str, Any],
    rows: list[dict],
    judged: Mapping[str, dict],
    prompt: EvalPrompt | None,
    settings: dict[str, Any],
    created: str,
    location: str,
) -> EvalLog:
    """The log of one condition: `about` (experiment, model, arm, seed, judge, condition) on the log and each sample,
    one epoch per reply in `rows`, the verdict rows in `judged` (by sample id) as scores and metrics."""
    condition, arm, seed = about["condition"], about["arm"], about["seed"]
    name = f"whytune/{about['model']}/{arm}"
    samples = []
    for epoch, row in enumerate(rows, start=1):
        sample_input, messages = _messages(prompt, condition, row["response"])
        samples.append(
            EvalSample(
                id=condition,
                epoch=epoch,
                input=sample_input,
                target="",
                messages=messages,
                output=ModelOutput.from_content(
                    name, row["response"], STOP_REASONS.get(row.get("finish", ""), "unknown")
                ),
                scores=_sample_scores(judged.get(row["id"])),
                metadata=about
                | {"sample_id": row["id"]}
                | {k: v for k, v in row.items() if k not in ("id", "arm", "seed", "condition", "response")},
            )
        )
    verdicts = [judged.get(row["id"], {}) for row in rows]
    scores = [_score(field, HARM_SCORER, [v.get(field) for v in verdicts]) for field in HARM_FIELDS]
    if any(ACTED in v for v in verdicts):
        scores.append(_score(ACTED, ACTED, [v.get(ACTED) for v in verdicts]))
    scenario, goal_type, goal_value, urgency = parse_condition(condition)
    ident = stable_hash(about)
    generate = GenerateConfig(
        temperature=settings.get("temperature"), top_p=settings.get("top_p"), max_tokens=settings.get("max_new_tokens")
    )
    return EvalLog(
        status="success",
        eval=EvalSpec(
            eval_id=ident,
            run_id=ident,
            task_id=ident,
            created=created,
            task=TASK,
            task_display_name=f"{arm} seed {seed}: {condition}",
            task_args={"scenario": scenario, "goal_type": goal_type, "goal_value": goal_value, "urgency_type": urgency},
            dataset=EvalDataset(name=condition, location=location, samples=1, sample_ids=[condition]),
            model=name,
            model_generate_config=generate,
            config=EvalConfig(epochs=len(rows), epochs_reducer=["mean"]),
            packages=_packages(),
            tags=[arm, f"seed{seed}", condition],
            metadata=about,
        ),
        plan=EvalPlan(steps=[EvalPlanStep(solver="whytune sampling", params=settings)], config=generate),
        results=EvalResults(total_samples=len(rows), completed_samples=len(rows), scores=scores),
        stats=EvalStats(started_at=created, completed_at=created),
        samples=samples,
    )


def _provenance_config(root: Path) -> dict[str, Any]:
    """The config the run last recorded (provenance.json), or nothing."""
    path = root / "provenance.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("config") or {}


def write_run(root: Path, out: Path | None = None) -> list[Path]:
    """Logs for every arm x seed x judge of a run folder, into `out` (default `<root>/inspect_logs`)."""
    config = _provenance_config(root)
    judge = config.get("judge")
    prompts_file = root / "eval" / "prompts.jsonl"
    prompts = {p.condition: p for p in read_prompts(prompts_file)} if prompts_file.exists() else {}
    found = sorted(root.glob("*/*/seed*/eval/verdicts-*.jsonl"))
    if not found:
        raise FileNotFoundError(f"{root}: no <model>/<arm>/seed<k>/eval/verdicts-*.jsonl; has the eval stage judged?")
    written = []
    for verdicts in found:
        # the config's judge is named only beside its own verdicts file; another judge's is named by its hash
        recorded = judge if judge and verdicts.name == verdicts_name(judge) else None
        written += write_logs(
            verdicts.parent,
            verdicts,
            out or root / LOGS,
            prompts=prompts,
            judge=recorded,
            sampling=config.get("eval"),
            experiment=config.get("name", root.name),
        )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m whytune.eval.inspect_log",
        description="Write every arm x seed x condition of a run folder as an Inspect eval log (inspect view).",
    )
    parser.add_argument("run", type=Path, help="the run folder (out=... of the run)")
    parser.add_argument("--out", type=Path, help="where to write the logs (default RUN/inspect_logs)")
    args = parser.parse_args(argv)
    try:
        written = write_run(args.run, args.out)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    where = args.out or args.run / LOGS
    print(f"{len(written)} Inspect logs in {where}; open them with: inspect view --log-dir {where}")


if __name__ == "__main__":
    main()
