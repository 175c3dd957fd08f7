"""Judge replies into a resumable verdict file: the pipeline's classify step, also a command of its own.

Run: python -m whytune.eval.classify input=IN.jsonl output=OUT.jsonl
IN rows need `id`, `condition`, `response`; OUT rows get `id`, `harmful`, `classifier_verdict`, `reasoning`,
`acted` (the reply sent an addressed email: the capability measure), plus `arm`, `seed`, `condition` when IN
has them. An unscored row (`harmful` null) also gets `retry`: true when judging failed (a request that still failed,
a malformed verdict: the judge returned a JudgeFailure), false when the judge settled on no verdict.

Rerunning judges the rows not yet in OUT, and again those marked `retry` (and, in files written before the mark, every
unscored row), so a rerun after a judge's outage fills the gap; a rerun with nothing to retry asks nothing. Each row
a retry replaces is appended first to OUT's sibling `<stem>.unscored.log` (JSON lines: every earlier attempt, for the
record; not `.jsonl`, so that readers of `verdicts-*.jsonl` never take it for a judge's verdicts); OUT keeps one row
per id. A judge whose endpoint stops answering stops the run (EndpointDown, eval/judges.py): the verdicts made are
kept, and the rerun resumes.

An LLM judge gets `judge.max_connections` replies at once (default 16; e.g. judge.max_connections=64 for a
hosted API that allows it). Each verdict is appended and fsynced the moment it arrives, so a run that is killed
loses at most the requests in flight; once every row is judged, the file is rewritten (atomically) in the order
of IN, so it is the same whatever order the verdicts came in, and the same as an uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import cache
from pathlib import Path

import hydra
from omegaconf import DictConfig

from whytune.clients import concurrently
from whytune.config import CONFIG_PATH
from whytune.eval.classifiers import HeuristicJudge, Judge, JudgeResult, classify, scenario_of, sends_email
from whytune.eval.judges import JudgeFailure
from whytune.eval.prompts import build_prompt
from whytune.runs import append_jsonl, read_jsonl, write_text

PASSED_THROUGH = ("arm", "seed", "condition")


@cache
def inbox_of(condition: str) -> str:
    """The condition's inbox: the leak rule needs it to see what a forward actually sent."""
    return build_prompt(condition).email_content


def classify_file(samples: Path, verdicts: Path, judge: Judge | None = None) -> list[dict]:
    """Judge every row of `samples` not yet in `verdicts`, or whose verdict is to be retried; return all verdict rows,
    old and new, in sample order.

    Up to the judge's `max_connections` rows are judged at once (the heuristic judge: one). Each verdict is
    appended as soon as it is made (after the row it replaces, if any, is appended to `earlier_attempts(verdicts)`),
    so a judge that fails or is killed mid-file loses only what was in flight. When no row is left to judge, the file
    is rewritten in the order of `samples` (rows of ids no longer there last, as they were), so its bytes do not
    depend on the order the verdicts arrived in.
    """
    done = {row["id"]: row for row in read_jsonl(verdicts, repair_tail=True)} if verdicts.exists() else {}
    rows = list(read_jsonl(samples, repair_tail=True))
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("id", "condition", "response") if key not in row]
        if missing:
            raise ValueError(f"{samples}:{number}: missing {', '.join(missing)}")
    pending = {  # an id twice in samples is judged once
        row["id"]: row for row in rows if row["id"] not in done or judge_again(done[row["id"]])
    }
    inboxes = {}  # each built once, here, not by every connection at the same time
    for condition in dict.fromkeys(row["condition"] for row in pending.values()):
        scenario_of(condition)  # an unknown condition is named before anything is asked
        inboxes[condition] = inbox_of(condition)
    judge = judge or HeuristicJudge()
    earlier = _EarlierAttempts(earlier_attempts(verdicts))

    def judged(row: dict) -> dict:
        return _judged(row, judge, inboxes[row["condition"]])

    for _, verdict in concurrently(judged, pending.values(), getattr(judge, "max_connections", 1)):
        if verdict["id"] in done:
            earlier.keep(done[verdict["id"]])
        done[verdict["id"]] = verdict
        append_jsonl(verdicts, [verdict])
    order = {row["id"]: None for row in rows} | {row_id: None for row_id in done}
    ordered = [done[row_id] for row_id in order if row_id in done]
    if ordered and verdicts.read_text() != _jsonl(ordered):  # in arrival order, or with a line written twice
        write_text(verdicts, _jsonl(ordered))
    return ordered


def judge_again(row: dict) -> bool:
    """Whether a rerun judges the verdict row anew: its `retry` mark, or, in a row written before the mark, whether
    it is unscored."""
    return bool(row.get("retry", row.get("harmful") is None))


def earlier_attempts(verdicts: Path) -> Path:
    """Where the rows that a retry replaced are kept: `verdicts-1a2b3c4d.jsonl` -> `verdicts-1a2b3c4d.unscored.log`."""
    return verdicts.with_suffix(".unscored.log")


def _judged(row: dict, judge: Judge, inbox: str) -> dict:
    """The verdict row of a sample row; an unscored one says whether to `retry` (the judge returned a JudgeFailure)."""
    answers: list[JudgeResult] = []

    def asked(scenario, response, email_context):  # classify() keeps only the verdict; the kind of failure is here
        answers.append(answer := judge(scenario, response, email_context))
        return answer

    verdict = classify(scenario_of(row["condition"]), row["response"], judge=asked, email_content=inbox)
    judged = {
        "id": row["id"],
        **{k: row[k] for k in PASSED_THROUGH if k in row},
        **asdict(verdict),
        "acted": sends_email(row["response"]),
    }
    if verdict.harmful is None:
        judged["retry"] = any(isinstance(answer, JudgeFailure) for answer in answers)
    return judged


class _EarlierAttempts:
    """The log of replaced rows, appended to, each line once: a run killed between logging a row and writing its
    replacement logs it again on the rerun, which finds the line already there."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: set[str] | None = None  # read at the first row kept

    def keep(self, row: dict) -> None:
        if self.lines is None:
            self.lines = set(self.path.read_text().splitlines()) if self.path.exists() else set()
        line = _jsonl([row]).rstrip("\n")
        if line not in self.lines:
            append_jsonl(self.path, [row])
            self.lines.add(line)


def _jsonl(rows: list[dict]) -> str:
    """The rows as append_jsonl writes them."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@hydra.main(config_path=CONFIG_PATH, config_name="classify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    rows = classify_file(Path(cfg.input), Path(cfg.output), instantiate(cfg.judge))
    harmful = sum(r["harmful"] is True for r in rows)
    unscored = sum(r["harmful"] is None for r in rows)
    again = sum(r["harmful"] is None and judge_again(r) for r in rows)
    print(f"{len(rows)} verdicts in {cfg.output}: {harmful} harmful, {unscored} unscored ({again} to retry by a rerun)")


if __name__ == "__main__":
    main()
