"""An offline wandb record of the smoke experiment, read back from the run files wandb wrote."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from tests.conftest import compose_config
from whytune.config import validate
from whytune.runner import run

BLOCK = 32768  # a .wandb file is a LevelDB-style log: 7-byte file header, then 7-byte-headed chunks in 32 KiB blocks
FULL, LAST = 1, 4
SECRET = "sk-whytune-test-0123456789abcdefghij"


def read_run(path: Path) -> dict:
    """The run record (config, group, job type), the history rows and the final summary of one offline run."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    found: dict = {"history": [], "summary": {}}
    position, payload = 7, b""
    while position + 7 <= len(data):
        room = BLOCK - position % BLOCK
        if room < 7:  # block padding
            position += room
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            _collect(wandb_internal_pb2.Record.FromString(payload), found)
            payload = b""
    return found


def _collect(record, found: dict) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        found["run"] = record.run
        found["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    elif kind == "history":
        row: dict = {}
        for item in record.history.item:
            _put(row, item)
        found["history"].append(row)
    elif kind == "summary":
        for item in record.summary.update:
            _put(found["summary"], item)


def _put(target: dict, item) -> None:
    """An item names its key directly or as a path into nested values (a logged table's fields)."""
    *parents, last = list(item.nested_key) or [item.key]
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = json.loads(item.value_json)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cache_dir):
    """One smoke run with wandb offline and a secret in the environment that must never reach a file."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    out = tmp_path_factory.mktemp("tracked")
    cfg = validate(
        compose_config(
            "experiment=smoke",
            f"out={out}",
            f"cache_dir={cache_dir}",
            "wandb.mode=offline",
            "wandb.tags=[ci]",
            "eval.samples=2",
            "eval.batch_size=2",
            "eval.forced_choice=false",
        )
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine a second torch thread mostly waits (60 s -> 16 s here)
    try:
        run(cfg)
    finally:
        wandb.teardown()  # the wandb service writes run files on its own schedule: let it finish them all
        torch.set_num_threads(threads)
        monkeypatch.undo()
    runs = defaultdict(dict)
    for path in out.glob("wandb/offline-run-*/run-*.wandb"):
        record = read_run(path)
        runs[record["run"].job_type][record["config"]["arm"]] = record
    return cfg, out, runs


def test_one_run_per_arm_and_stage_grouped_by_experiment(tracked):
    cfg, _, runs = tracked
    assert set(runs["train"]) == {"demos", "demos_principles"}  # the baseline trains nothing
    assert set(runs["eval"]) == set(cfg.arms)
    assert set(runs["report"]) == {None}
    for stage in runs.values():
        for record in stage.values():
            assert record["run"].run_group == "smoke"
            assert list(record["run"].tags) == ["ci", "tiny-random"]
            assert record["config"]["seed"] in (0, None) and record["config"]["model"]["name"] == "tiny-random"


def test_train_runs_hold_the_config_and_the_loss_curve(tracked):
    cfg, _, runs = tracked
    for arm, record in runs["train"].items():
        assert record["config"]["stage"] == "train" and record["config"]["train"]["lr"] == cfg.train.lr
        losses = [row["train/loss"] for row in record["history"] if "train/loss" in row]
        assert len(losses) == 2 and all(loss > 0 for loss in losses)  # 8 examples, batch 4: two logged steps


def test_eval_runs_hold_each_conditions_rate_with_its_interval(tracked):
    _, _, runs = tracked
    for arm, record in runs["eval"].items():
        summary = record["summary"]
        prefix = "eval/blackmail_explicit-america_replacement"
        assert summary[f"{prefix}/n"] + summary[f"{prefix}/unscored"] == 2
        assert summary[f"{prefix}/ci_low"] <= summary[f"{prefix}/rate"] <= summary[f"{prefix}/ci_high"]


def test_report_run_holds_the_results_table_and_a_bar_chart(tracked):
    _, _, runs = tracked
    summary = runs["report"][None]["summary"]
    assert summary["results"]["_type"] == "table-file" and summary["results"]["nrows"] == 3
    assert summary["rates_figure"]["_type"] == "image-file"
    assert any(key.startswith("rates") and value.get("_type") == "table-file" for key, value in summary.items())


def test_no_secret_lands_in_any_run_file(tracked):
    _, out, _ = tracked
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
