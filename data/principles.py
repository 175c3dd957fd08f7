"""The constitution in data/principles.md, parsed into entries that writers cite by id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PRINCIPLES = Path(__file__).with_name("principles.md")

_HEADING = re.compile(r"^## ([a-z][a-z0-9-]*): (\S.*)$")
_FIELDS = {"Principle:": "statement", "Why:": "reason"}


@dataclass(frozen=True)
class Principle:
    id: str
    title: str
    statement: str
    reason: str

    @property
    def title_lc(self) -> str:
        return lower_first(self.title)

    @property
    def reason_lc(self) -> str:
        return lower_first(self.reason)


def constitution_text(path: Path | None = None) -> str:
    """The whole file, as a teacher model reads it in its system prompt."""
    return (path or DEFAULT_PRINCIPLES).read_text(encoding="utf-8").strip()


def load_principles(path: Path | None = None) -> dict[str, Principle]:
    """Parse `## id: title` entries, each with one `Principle:` and one `Why:` line.

    Text before the first entry is free prose and ignored; anything malformed after it is an error.
    """
    path = path or DEFAULT_PRINCIPLES
    entries: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("## "):
            _close(current, path)
            current = _open_entry(line, lineno, path, entries)
        elif current is not None and line:
            _add_field(current, line, lineno, path)
    _close(current, path)
    if not entries:
        raise ValueError(f"{path}: no principles found")
    return {pid: Principle(pid, e["title"], e["statement"], e["reason"]) for pid, e in entries.items()}


def require(principles: dict[str, Principle], ids: tuple[str, ...], scenario_id: str) -> None:
    """Fail naming the scenario when it cites a principle the file does not define."""
    missing = sorted(set(ids) - set(principles))
    if missing:
        raise ValueError(f"scenario {scenario_id} cites principles not in the file: {', '.join(missing)}")


def lower_first(text: str) -> str:
    """Lower-case a sentence's first letter for use mid-sentence, leaving the pronoun 'I' alone."""
    return text if re.match(r"I\b", text) else text[:1].lower() + text[1:]


def _open_entry(line: str, lineno: int, path: Path, entries: dict[str, dict[str, str]]) -> dict[str, str]:
    match = _HEADING.match(line)
    if match is None:
        raise ValueError(f"{path}, line {lineno}: heading must look like '## some-id: Title', got {line!r}")
    pid, title = match.groups()
    if pid in entries:
        raise ValueError(f"{path}, line {lineno}: duplicate principle id {pid!r}")
    entries[pid] = {"title": title.strip(), "line": str(lineno)}
    return entries[pid]


def _add_field(entry: dict[str, str], line: str, lineno: int, path: Path) -> None:
    prefix = next((p for p in _FIELDS if line.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"{path}, line {lineno}: expected a 'Principle:' or 'Why:' line, got {line!r}")
    key = _FIELDS[prefix]
    value = line[len(prefix) :].strip()
    if key in entry or not value:
        raise ValueError(f"{path}, line {lineno}: {prefix} line is repeated or empty")
    entry[key] = value


def _close(entry: dict[str, str] | None, path: Path) -> None:
    """Reject an entry that ended without both fields, pointing at its heading line."""
    if entry is None:
        return
    missing = [p for p, key in _FIELDS.items() if key not in entry]
    if missing:
        raise ValueError(f"{path}, line {entry['line']}: principle entry is missing {' and '.join(missing)}")
