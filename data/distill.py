"""Teacher-written replies for one arm: asked once per example id, stored as they arrive, vetted on every build.

Each reply is appended (and fsynced) to `teacher.jsonl` in the arm's folder with its example id and a hash
of the exact request and teacher, so an interrupted build resumes by asking only for the ids still missing,
and a changed prompt, constitution or teacher is refused rather than silently mixed in. Dropped replies stay
in the store; the dataset card counts them by reason.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from whytune.data.scenarios import Scenario
from whytune.data.teacher import Teacher
from whytune.data.writers import Writer
from whytune.runs import StaleOutputError, append_jsonl, read_jsonl, stable_hash

STORE = "teacher.jsonl"


@dataclass(frozen=True)
class Taught:
    teacher: dict[str, Any]  # the teacher's identity
    replies: dict[str, str]  # example id -> the vetted reply, for the kept examples only
    asked: int  # requests sent in this build; the other replies came from the store
    drops: dict[str, int]  # reason -> number of replies dropped for it


def request(writer: Writer, scenario: Scenario, constitution: str) -> list[dict]:
    """The arm's prompt with the constitution (and the arm's note) leading the system prompt.

    Only the teacher sees this; the stored example keeps the arm's own prompt, so the trained model never
    sees the constitution it is meant to internalise.
    """
    assert writer.teaching is not None
    prompt = writer.prompt(scenario)
    own = [m["content"] for m in prompt if m["role"] == "system"]
    system = "\n\n".join(part for part in (constitution, *own, writer.teaching.note(scenario)) if part)
    return [{"role": "system", "content": system}, *(m for m in prompt if m["role"] != "system")]


def teach(writer: Writer, scenarios: list[Scenario], teacher: Teacher, constitution: str, folder: Path) -> Taught:
    """Ask for every reply not yet stored, then vet them all; `replies` keeps the scenarios' order."""
    assert writer.teaching is not None
    store = folder / STORE
    requests = {s.id: request(writer, s, constitution) for s in scenarios}
    keys = {sid: stable_hash({"messages": messages, "teacher": teacher.identity}) for sid, messages in requests.items()}
    replies = _stored(store, keys)
    missing = {sid: messages for sid, messages in requests.items() if sid not in replies}
    _ask(teacher, missing, keys, store, replies)
    kept: dict[str, str] = {}
    drops: Counter[str] = Counter()
    for s in scenarios:
        vetted = writer.teaching.vet(replies[s.id], s)
        if vetted.reply is None:
            drops[vetted.reason] += 1
        else:
            kept[s.id] = vetted.reply
    return Taught(teacher.identity, kept, len(missing), dict(drops))


def _stored(store: Path, keys: dict[str, str]) -> dict[str, str]:
    """Replies already in the store for this build's requests; a reply to any other request is refused."""
    if not store.exists():
        return {}
    replies: dict[str, str] = {}
    for row in read_jsonl(store, repair_tail=True):
        if row["id"] not in keys:
            continue  # an earlier, larger build: shorter builds are prefixes of longer ones
        if row["key"] != keys[row["id"]]:
            raise StaleOutputError(
                f"{store}: the stored reply for {row['id']} answers another prompt or teacher; "
                "choose another out= or delete that file"
            )
        replies.setdefault(row["id"], row["reply"])
    return replies


def _ask(
    teacher: Teacher, missing: dict[str, list[dict]], keys: dict[str, str], store: Path, replies: dict[str, str]
) -> None:
    """Store each reply the moment it arrives; on a failure, keep what finished and re-raise."""
    if not missing:
        return
    failure: BaseException | None = None
    progress = tqdm(total=len(missing), desc="teacher", unit="reply")
    with ThreadPoolExecutor(max(1, teacher.workers)) as pool, progress:
        futures = {pool.submit(teacher, messages): sid for sid, messages in missing.items()}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            if future.exception() is not None:
                failure = failure or future.exception()
                for pending in futures:
                    pending.cancel()
                continue
            sid = futures[future]
            append_jsonl(store, [{"id": sid, "key": keys[sid], "teacher": teacher.identity, "reply": future.result()}])
            replies[sid] = future.result()
            progress.update(1)
    if failure is not None:
        raise failure
