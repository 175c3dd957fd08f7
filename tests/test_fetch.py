"""whytune-fetch: a Hub model into the Hugging Face cache, found there offline; a local folder checked; a built model
reported. The Hub is a local folder copied into the cache's own layout, so nothing here needs a network."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

import whytune.fetch
from tests.conftest import compose_config
from whytune.config import validate
from whytune.fetch import ALLOW_PATTERNS, IGNORE_PATTERNS, fetch
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir

HUB_ID = "whytune-tests/tiny-random"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Files a Hub repo holds beside the model that a run never reads: the fetch leaves them on the Hub.
NOT_FETCHED = ["consolidated.safetensors", "original/params.json", "README.md", "training_args.bin"]


def pretrained_cfg(tmp_path: Path, path: str):
    """The smoke experiment with the tiny model read as a pretrained one from `path`."""
    overrides = [f"out={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "model.source=pretrained"]
    return validate(compose_config("experiment=smoke", *overrides, f"model.path={path}"))


@pytest.fixture
def hub_repo(tiny_dir, tmp_path) -> Path:
    """The tiny model as a Hub repo holds it: the model's files and some a run never reads."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_dir, repo, ignore=shutil.ignore_patterns(".*", "stage.json"))
    for name in NOT_FETCHED:
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text("{}")
    return repo


def fake_snapshot_download(repo: Path, cache: Path, calls: list[dict]):
    """snapshot_download that fetches from `repo` into the Hugging Face cache layout: blobs named by content, the
    snapshot's files linked to them, and the revision's ref naming the commit."""

    def download(repo_id: str, *, revision=None, allow_patterns=None, ignore_patterns=None) -> str:
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        root = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = root / "snapshots" / COMMIT
        files = [str(p.relative_to(repo)) for p in sorted(repo.rglob("*")) if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            data = (repo / name).read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / (revision or "main")).write_text(COMMIT)
        return str(snapshot)

    return download


def test_a_hub_model_is_fetched_into_the_cache_and_found_there_offline(hub_repo, tiny_dir, tmp_path, monkeypatch):
    cache, calls = tmp_path / "hf", []
    monkeypatch.setattr(whytune.fetch, "snapshot_download", fake_snapshot_download(hub_repo, cache, calls))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cfg = pretrained_cfg(tmp_path, HUB_ID)

    fetched = fetch(cfg)

    assert calls == [{"repo_id": HUB_ID, "revision": None, "allow_patterns": ALLOW_PATTERNS}]
    assert fetched.env == {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    snapshot = cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / COMMIT
    assert fetched.folder == snapshot
    assert {p.name for p in snapshot.iterdir()} == {p.name for p in hub_repo.iterdir()} - {*NOT_FETCHED, "original"}
    # A job on a compute node: the Hub id, offline, through the project's loader.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    assert location == HUB_ID
    tokenizer = load_tokenizer(cfg.model, location)
    assert tokenizer.chat_template and tokenizer("blackmail")["input_ids"]
    model = load_model(cfg.model, location, torch.device("cpu"))
    assert model.num_parameters() > 0 and fingerprint(location) == fingerprint(tiny_dir)


def test_ignored_weights_copies_are_never_fetched():
    """Mistral repos carry consolidated.safetensors, a second copy of the weights in a layout transformers never
    reads; Meta's carry original/."""
    read = [
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer.model",
        "merges.txt",
        "chat_template.jinja",
    ]
    unread = ["consolidated.safetensors", "original/consolidated.00.pth", "original/params.json", "README.md"]
    assert (
        list(filter_repo_objects(read + unread, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)) == read
    )


def test_a_local_folder_is_checked_and_reported(tiny_dir, tmp_path):
    fetched = fetch(pretrained_cfg(tmp_path, tiny_dir))
    assert fetched.folder == Path(tiny_dir) and fetched.env == {}
    assert "checked" in fetched.message() and tiny_dir in fetched.message()


@pytest.mark.parametrize(
    ("remove", "error"),
    [
        ("model.safetensors", "lacks weights"),
        ("tokenizer.json", "lacks a tokenizer"),
        ("config.json", "not a model folder"),
    ],
)
def test_a_local_folder_missing_a_part_is_refused(hub_repo, tmp_path, remove, error):
    (hub_repo / remove).unlink()
    (hub_repo / "consolidated.safetensors").unlink()  # would stand in for the weights
    with pytest.raises(FileNotFoundError, match=error):
        fetch(pretrained_cfg(tmp_path, str(hub_repo)))


def test_a_sharded_model_missing_a_shard_is_refused(hub_repo, tmp_path):
    (hub_repo / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    )
    shutil.copy(hub_repo / "model.safetensors", hub_repo / "model-00001-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="lacks model-00002-of-00002.safetensors$"):
        fetch(pretrained_cfg(tmp_path, str(hub_repo)))


def test_whytune_fetch_reports_a_built_model_in_whytunes_cache(tiny_dir, cache_dir, tmp_path, monkeypatch, capsys):
    """The console script's function, with a user's overrides: the tiny model, already built, is reported where a
    run finds it."""
    argv = ["whytune-fetch", "experiment=smoke", f"out={tmp_path / 'run'}", f"cache_dir={cache_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    whytune.fetch.main()
    printed = capsys.readouterr().out
    assert "tiny-random: built into whytune's cache" in printed and f"\n  in {tiny_dir}\n" in printed
    assert f"export WHYTUNE_CACHE={cache_dir}" in printed
