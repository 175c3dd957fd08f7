"""The run folder: where every stage writes, how it knows a stage is already done, and provenance.

Layout (see the design notes):
    <out>/data/<arm>/                          train.jsonl, HF dataset, README.md card
    <out>/<model>/<arm>/seed<k>/adapter/       LoRA adapter + manifest.json
    <out>/eval/prompts.jsonl                   one row per condition, canonical text
    <out>/<model>/<arm>/seed<k>/eval/          samples.jsonl (append-only), verdicts-<judge>.jsonl
    <out>/results.csv, results.md, rates.png   the report
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from whytune.config import WhytuneConfig

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "hydra-core", "inspect-evals", "wandb")


@dataclass(frozen=True)
class RunPaths:
    root: Path
    model: str

    @classmethod
    def of(cls, cfg: WhytuneConfig) -> RunPaths:
        return cls(Path(cfg.out), cfg.model.name)

    def data(self, arm: str) -> Path:
        return self.root / "data" / arm

    def seed_dir(self, arm: str, seed: int) -> Path:
        return self.root / self.model / arm / f"seed{seed}"

    def adapter(self, arm: str, seed: int) -> Path:
        return self.seed_dir(arm, seed) / "adapter"

    def eval(self, arm: str, seed: int) -> Path:
        return self.seed_dir(arm, seed) / "eval"

    def verdicts(self, arm: str, seed: int, judge: dict) -> Path:
        return self.eval(arm, seed) / verdicts_name(judge)

    @property
    def prompts(self) -> Path:
        return self.root / "eval" / "prompts.jsonl"


# Judge settings that change how fast verdicts come or when an outage stops the run, not what they are: a rerun
# with more connections finds the verdicts already made.
_JUDGE_SPEED_ONLY = ("max_connections", "max_consecutive_failures")


def verdicts_name(judge: dict) -> str:
    """One verdicts file per judge: rejudging with another judge keeps both."""
    return f"verdicts-{stable_hash({k: v for k, v in judge.items() if k not in _JUDGE_SPEED_ONLY})[:8]}.jsonl"


def judge_record(verdicts: Path) -> Path:
    """The judge's settings beside its verdicts file (whose name holds only their hash): the report names judges by
    it."""
    return verdicts.with_suffix(".judge.json")


def stable_hash(obj: Any) -> str:
    """Hash of a config section: the same settings give the same hash across runs and machines."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StaleOutputError(RuntimeError):
    """Outputs exist in a folder but were made with other settings: never overwrite them silently."""


def stage_done(folder: Path, key: str) -> bool:
    """True when `folder` holds a finished stage made with the same settings (same key).

    Every stage marks its folders the same way: `stage.json` holds the settings' key, and `finished` once done.
    Outputs of other settings are never overwritten: they raise.
    """
    marker = folder / "stage.json"
    if not marker.exists():
        return False
    made = json.loads(marker.read_text())
    if made["key"] != key:
        raise StaleOutputError(
            f"{folder} was made with other settings (key {made['key']}, now {key}); "
            "choose another out= or delete that folder"
        )
    return "finished" in made


def mark_done(folder: Path, key: str) -> None:
    """Mark `folder`'s stage finished with `key`'s settings, its files first made readable as the umask allows
    (share_modes): every stage folder (data, adapter, merged model) is finished here."""
    share_modes(folder)
    write_json(folder / "stage.json", {"key": key, "finished": now()})


def claim(folder: Path, key: str) -> None:
    """Mark `folder` as filled with `key`'s settings, for a stage that grows its outputs across runs (the samples,
    appended until there are enough): a later run with other settings is refused, as for a finished stage."""
    if (folder / "stage.json").exists():
        stage_done(folder, key)  # raises when the folder holds another settings' outputs
    else:
        write_json(folder / "stage.json", {"key": key})


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its `.lock` file): concurrent jobs sharing a run folder build a stage once.

    flock works across the processes and nodes of a cluster file system that supports it (NFSv4, Lustre, GPFS);
    the lock is released when the holder exits, even if it is killed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Write via a temporary file and rename, so an interrupted write never leaves half a file."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary sibling and rename it into place, so readers never see half a file.

    The one way every stage writes a whole file. The temporary file is created like an ordinary `open()` would
    create it (0666 less the umask): results on a shared cluster file system stay readable by the user's
    colleagues (mkstemp would make them 0600, owner only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def share_modes(folder: Path) -> None:
    """Give `folder` and everything under it the mode an ordinary open() or mkdir() gives: 0666 for a file, 0777 for a
    folder or an executable, less the umask; the owner's own access is kept whatever the umask.

    Call it on every folder a stage saves a model or an adapter into. Some writers make files for their owner alone
    whatever the umask: safetensors 0.8 writes each weights file through a temporary file, which the tempfile crate
    makes 0600, and renames it into place. Colleagues on a shared cluster file system could then read an adapter's
    config but not its weights. Links are left alone (chmod would follow them), and so is what another user owns.
    """
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            continue
        executable = stat.S_ISDIR(info.st_mode) or info.st_mode & stat.S_IXUSR
        os.chmod(path, ((0o777 if executable else 0o666) & ~mask) | (info.st_mode & stat.S_IRWXU))


def umask() -> int:
    """The process's umask, from /proc where Linux reports it; elsewhere set and put back (os.umask's only way to read
    it), which for that instant gives another thread's new files the mode it names."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync: once this returns, a crash cannot lose them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path, repair_tail: bool = False) -> Iterator[dict]:
    """Rows of a JSONL file; a malformed line raises naming the file and line.

    With repair_tail, a last line cut short by a crash (no newline) is dropped from the file, since the
    append that wrote it never returned; any other malformed line is still an error.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if repair_tail:
        _drop_torn_tail(path)
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield row


def _drop_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def provenance(cfg: WhytuneConfig | None = None) -> dict:
    """What a reader needs to reproduce a result: config, code version, package versions, machine."""
    info = {
        "time": now(),
        "git": _git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if cfg is not None:
        info["config"] = asdict(cfg)
    return info


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict:
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}
