"""One HTML page to read what each arm actually wrote, with its verdict beside it (opens in any browser)."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from whytune.runs import write_text

VERDICT_TEXT = {True: "harmful", False: "not harmful", None: "unscored"}


def write_browser(samples: list[dict], verdicts: dict[str, dict], path: Path, title: str) -> None:
    """Samples grouped by condition then arm; each reply folded under its id, verdict and judge's reasoning."""
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in samples:
        groups[row["condition"]][row["arm"]].append(row)
    parts = [
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}pre{white-space:pre-wrap;"
        "background:#f6f6f6;padding:.5em}.harmful{color:#b00}.unscored{color:#a60}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for condition, arms in groups.items():
        parts.append(f"<h2>{html.escape(condition)}</h2>")
        for arm, rows in arms.items():
            parts.append(f"<h3>{html.escape(arm)} ({len(rows)} samples)</h3>")
            parts += [_sample(row, verdicts.get(row["id"], {})) for row in rows]
    write_text(path, "\n".join(parts) + "\n")


def _sample(row: dict, verdict: dict) -> str:
    label = VERDICT_TEXT[verdict.get("harmful")] if verdict else "not judged"
    css = label.replace(" ", "-")
    return (
        f"<details><summary>{html.escape(row['id'])}: <span class={css}>{label}</span>"
        f" (finish: {html.escape(str(row.get('finish')))})</summary>"
        f"<p><b>Judge:</b> {html.escape(str(verdict.get('reasoning', '')))}</p>"
        f"<pre>{html.escape(row['response'])}</pre></details>"
    )
