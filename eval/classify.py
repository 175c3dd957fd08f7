"""Judge replies into an append-only verdict file: the pipeline's classify step, also a command of its own.

Run: python -m whytune.eval.classify input=IN.jsonl output=OUT.jsonl
IN rows need `id`, `condition`, `response`; OUT rows get `id`, `harmful`, `classifier_verdict`, `reasoning`,
`acted` (the reply sent an addressed email: the capability measure), plus `arm`, `seed`, `condition` when IN
has them. Rerunning judges only the rows not yet in OUT.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from pathlib import Path

import hydra
from omegaconf import DictConfig

from whytune.config import CONFIG_PATH
from whytune.eval.classifiers import Judge, classify, scenario_of, sends_email
from whytune.eval.prompts import build_prompt
from whytune.runs import append_jsonl, read_jsonl

PASSED_THROUGH = ("arm", "seed", "condition")


@cache
def inbox_of(condition: str) -> str:
    """The condition's inbox: the leak rule needs it to see what a forward actually sent."""
    return build_prompt(condition).email_content


def classify_file(samples: Path, verdicts: Path, judge: Judge | None = None) -> list[dict]:
    """Judge every row of `samples` not yet in `verdicts`; return all verdict rows, old and new.

    Each verdict is appended as soon as it is made, so a judge that fails mid-file loses nothing.
    """
    done = {row["id"]: row for row in read_jsonl(verdicts, repair_tail=True)} if verdicts.exists() else {}
    for number, row in enumerate(read_jsonl(samples, repair_tail=True), start=1):
        missing = [key for key in ("id", "condition", "response") if key not in row]
        if missing:
            raise ValueError(f"{samples}:{number}: missing {', '.join(missing)}")
        if row["id"] in done:
            continue
        verdict = classify(
            scenario_of(row["condition"]), row["response"], judge=judge, email_content=inbox_of(row["condition"])
        )
        done[row["id"]] = {
            "id": row["id"],
            **{k: row[k] for k in PASSED_THROUGH if k in row},
            **asdict(verdict),
            "acted": sends_email(row["response"]),
        }
        append_jsonl(verdicts, [done[row["id"]]])
    return list(done.values())


@hydra.main(config_path=CONFIG_PATH, config_name="classify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    rows = classify_file(Path(cfg.input), Path(cfg.output), instantiate(cfg.judge))
    harmful = sum(r["harmful"] is True for r in rows)
    unscored = sum(r["harmful"] is None for r in rows)
    print(f"{len(rows)} verdicts in {cfg.output}: {harmful} harmful, {unscored} unscored")


if __name__ == "__main__":
    main()
