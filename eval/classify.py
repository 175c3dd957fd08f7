"""Judge replies into a resumable verdict file: the pipeline's classify step, also a command of its own.

Run: python -m whytune.eval.classify input=IN.jsonl output=OUT.jsonl
IN rows need `id`, `condition`, `response`; OUT rows get `id`, `harmful`, `classifier_verdict`, `reasoning`,
`acted` (the reply sent an addressed email: the capability measure), plus `arm`, `seed`, `condition` when IN
has them. Rerunning judges only the rows not yet in OUT.

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
from whytune.eval.classifiers import Judge, classify, scenario_of, sends_email
from whytune.eval.prompts import build_prompt
from whytune.runs import append_jsonl, read_jsonl, write_text

PASSED_THROUGH = ("arm", "seed", "condition")


@cache
def inbox_of(condition: str) -> str:
    """The condition's inbox: the leak rule needs it to see what a forward actually sent."""
    return build_prompt(condition).email_content


def classify_file(samples: Path, verdicts: Path, judge: Judge | None = None) -> list[dict]:
    """Judge every row of `samples` not yet in `verdicts`; return all verdict rows, old and new, in sample order.

    Up to the judge's `max_connections` rows are judged at once (the heuristic judge: one). Each verdict is
    appended as soon as it is made, so a judge that fails or is killed mid-file loses only what was in flight.
    When no row is left to judge, the file is rewritten in the order of `samples` (rows of ids no longer there
    last, as they were), so its bytes do not depend on the order the verdicts arrived in.
    """
    done = {row["id"]: row for row in read_jsonl(verdicts, repair_tail=True)} if verdicts.exists() else {}
    rows = list(read_jsonl(samples, repair_tail=True))
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("id", "condition", "response") if key not in row]
        if missing:
            raise ValueError(f"{samples}:{number}: missing {', '.join(missing)}")
    pending = {row["id"]: row for row in rows if row["id"] not in done}  # an id twice in samples is judged once
    inboxes = {}  # each built once, here, not by every connection at the same time
    for condition in dict.fromkeys(row["condition"] for row in pending.values()):
        scenario_of(condition)  # an unknown condition is named before anything is asked
        inboxes[condition] = inbox_of(condition)

    def judged(row: dict) -> dict:
        verdict = classify(
            scenario_of(row["condition"]), row["response"], judge=judge, email_content=inboxes[row["condition"]]
        )
        return {
            "id": row["id"],
            **{k: row[k] for k in PASSED_THROUGH if k in row},
            **asdict(verdict),
            "acted": sends_email(row["response"]),
        }

    for _, verdict in concurrently(judged, pending.values(), getattr(judge, "max_connections", 1)):
        done[verdict["id"]] = verdict
        append_jsonl(verdicts, [verdict])
    order = {row["id"]: None for row in rows} | {row_id: None for row_id in done}
    ordered = [done[row_id] for row_id in order if row_id in done]
    if ordered and verdicts.read_text() != _jsonl(ordered):  # in arrival order, or with a line written twice
        write_text(verdicts, _jsonl(ordered))
    return ordered


def _jsonl(rows: list[dict]) -> str:
    """The rows as append_jsonl writes them."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@hydra.main(config_path=CONFIG_PATH, config_name="classify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    rows = classify_file(Path(cfg.input), Path(cfg.output), instantiate(cfg.judge))
    harmful = sum(r["harmful"] is True for r in rows)
    unscored = sum(r["harmful"] is None for r in rows)
    print(f"{len(rows)} verdicts in {cfg.output}: {harmful} harmful, {unscored} unscored")


if __name__ == "__main__":
    main()
