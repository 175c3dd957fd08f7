"""An offline wandb record of the smoke experiment and of its rerun, read back from the run files wandb wrote."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from tests.conftest import compose_config
from whytune import tracking
from whytune.config import validate
from whytune.eval.agreement import Agreement
from whytune.eval.report import judge_agreement, persistence
from whytune.runner import run
from whytune.stats import Rate

BLOCK = 32768  # a .wandb file is a LevelDB-style log: 7-byte file header, then 7-byte-headed chunks in 32 KiB blocks
FULL, LAST = 1, 4
SECRET = "sk-whytune-test-0123456789abcdefghij"


def read_run(path: Path) -> dict:
    """The run record (config, group, job type), the history rows and the final summary of one offline run."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    found: dict = {"history": [], "summary": {}, "folder": path.parent}
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


def read_runs(out: Path) -> list[dict]:
    """Every offline run folder's record (each launch that logged to a run writes a folder of its own)."""
    return [read_run(path) for path in sorted(out.glob("wandb/offline-run-*/run-*.wandb"))]


def who(record: dict) -> tuple:
    """The identity a run stands for: stage, model, arm, seed."""
    config = record["config"]
    return record["run"].job_type, config["model"]["name"], config["arm"], config["seed"]


def launch(cfg) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine a second torch thread mostly waits (60 s -> 16 s here)
    try:
        run(cfg)
    finally:
        wandb.teardown()  # the wandb service writes run files on its own schedule: let it finish them all
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cache_dir):
    """One smoke run with wandb offline and a secret in the environment that must never reach a file, then the same
    run again (every stage found done), as after a Slurm requeue. Returns the config, the run folder, the runs of
    the first launch by stage and arm, and every run folder after each launch."""
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
        )
    )
    try:
        launch(cfg)
        first = read_runs(out)
        launch(cfg)
        again = read_runs(out)
    finally:
        monkeypatch.undo()
    runs = defaultdict(dict)
    for record in first:
        runs[record["run"].job_type][record["config"]["arm"]] = record
    return cfg, out, runs, first, again


def test_one_run_per_arm_and_stage_grouped_by_experiment(tracked):
    cfg, _, runs, _, _ = tracked
    assert set(runs["train"]) == {"demos", "demos_principles"}  # the baseline trains nothing
    assert set(runs["eval"]) == set(cfg.arms)
    assert set(runs["report"]) == {None}
    for stage in runs.values():
        for record in stage.values():
            assert record["run"].run_group == "smoke"
            assert list(record["run"].tags) == ["ci", "tiny-random"]
            assert record["config"]["seed"] in (0, None) and record["config"]["model"]["name"] == "tiny-random"


def test_a_rerun_opens_no_new_run_and_each_identity_keeps_one_id(tracked):
    cfg, _, _, first, again = tracked
    assert [r["folder"].name for r in again] == [r["folder"].name for r in first]  # every stage found done
    ids = {who(record): record["run"].run_id for record in first}
    assert len(ids) == len(first) == 6 and len(set(ids.values())) == 6  # 2 train + 3 eval + 1 report, no two alike
    for (stage, _, arm, seed), run_id in ids.items():
        assert run_id == tracking.identity(cfg, stage, arm, seed).id  # a stable hash: the same on every launch
        assert run_id.isalnum() and len(run_id) < 64
    assert all(r["folder"].name.endswith(f"-{r['run'].run_id}") for r in first)


def test_run_names_carry_the_model(tracked):
    _, _, runs, _, _ = tracked
    names = {record["run"].display_name for stage in runs.values() for record in stage.values()}
    assert names == {
        "tiny-random/demos-seed0-train",
        "tiny-random/demos_principles-seed0-train",
        "tiny-random/baseline-seed0-eval",
        "tiny-random/demos-seed0-eval",
        "tiny-random/demos_principles-seed0-eval",
        "tiny-random/report",
    }


def test_identities_differ_by_model_and_by_run_folder(tracked, tmp_path):
    """A persistence tune (`<model>+<arm>`) is not its model's run; another run folder of the experiment draws its
    own token, so a fresh start never resumes the old folder's runs."""
    cfg, _, _, _, _ = tracked
    base = tracking.identity(cfg, "train", "neutral", 0)
    tuned = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="tiny-random+demos"))
    assert tracking.identity(tuned, "train", "neutral", 0).id != base.id
    assert tracking.identity(tuned, "train", "neutral", 0).name == "tiny-random+demos/neutral-seed0-train"
    elsewhere = dataclasses.replace(cfg, out=str(tmp_path))
    assert tracking.identity(elsewhere, "train", "neutral", 0).id != base.id


def test_train_runs_hold_the_config_and_the_loss_curve(tracked):
    cfg, _, runs, _, _ = tracked
    for arm, record in runs["train"].items():
        assert record["config"]["stage"] == "train" and record["config"]["train"]["lr"] == cfg.train.lr
        losses = [row["train/loss"] for row in record["history"] if "train/loss" in row]
        assert len(losses) == 2 and all(loss > 0 for loss in losses)  # 8 examples, batch 4: two logged steps


def test_eval_runs_hold_each_conditions_rate_with_its_interval(tracked):
    _, _, runs, _, _ = tracked
    for arm, record in runs["eval"].items():
        summary = record["summary"]
        prefix = "eval/blackmail_explicit-america_replacement"
        assert summary[f"{prefix}/n"] + summary[f"{prefix}/unscored"] == 2
        assert summary[f"{prefix}/ci_low"] <= summary[f"{prefix}/rate"] <= summary[f"{prefix}/ci_high"]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_report_run_holds_every_report_table_as_written(tracked):
    """Each CSV the report wrote is a table of the report run with the file's columns and rows."""
    _, out, runs, _, _ = tracked
    record = runs["report"][None]
    summary = record["summary"]
    written = {Path(f.csv).stem for f in tracking.REPORT_FILES if (out / f.csv).exists()}
    assert written == {
        "results",
        "results_by_seed",
        "comparisons",
        "coercive_words",
        "forced_choice",
        "forced_choice_differences",
    }
    for name in written:
        columns, rows = read_csv(out / f"{name}.csv")
        assert summary[name]["_type"] == "table-file" and summary[name]["nrows"] == len(rows) > 0
        table = json.loads((record["folder"] / "files" / summary[name]["path"]).read_text())
        assert table["columns"] == columns, name
    columns, _ = read_csv(out / "comparisons.csv")
    assert {"p_value", "p_holm", "level", "cohens_h", "p_equivalence", "reading"} <= set(columns)
    assert {"truncated", "truncated_share"} <= set(read_csv(out / "results.csv")[0])
    assert summary["rates_figure"]["_type"] == "image-file"
    assert summary["forced_choice_figure"]["_type"] == "image-file"
    assert any(key.startswith("rates") and value.get("_type") == "table-file" for key, value in summary.items())


def test_report_summary_holds_each_arms_rate_test_and_truncation(tracked):
    """The summary metrics the dashboard groups by arm, equal to the report's files."""
    cfg, out, runs, _, _ = tracked
    summary = runs["report"][None]["summary"]
    _, results = read_csv(out / "results.csv")
    assert len(results) == 3
    for row in results:
        where = f"{row['condition']}/{row['arm']}"
        assert summary[f"harmful_rate/{where}"] == float(row["rate"])
        assert summary[f"truncated_share/{where}"] == float(row["truncated_share"])
        if row["arm"] == cfg.baseline:
            assert f"p_vs_baseline/{where}" not in summary  # an empty cell is left out
        else:
            assert summary[f"p_vs_baseline/{where}"] == float(row["p_vs_baseline"])
            assert summary[f"level_vs_baseline/{where}"] == row["level_vs_baseline"] == "sample-level"
    _, comparisons = read_csv(out / "comparisons.csv")
    assert len(comparisons) == 3  # each trained arm against the baseline, and the matched pair
    for row in comparisons:
        where = f"{row['condition']}/{row['arm_a']} vs {row['arm_b']}"
        assert summary[f"p_holm/{where}"] == float(row["p_holm"]) and summary[f"reading/{where}"] == row["reading"]
    _, differences = read_csv(out / "forced_choice_differences.csv")
    for row in differences:
        where = f"{row['condition']}/{row['arm']} vs {row['reference']}"
        assert summary[f"forced_choice_difference/{where}"] == pytest.approx(float(row["mean"]))


def test_a_report_logged_again_continues_its_run(tracked):
    """A report whose marker is gone (a launch stopped while logging, a requeue) logs into the same run id."""
    cfg, out, runs, _, _ = tracked
    report_id = runs["report"][None]["run"].run_id
    (out / "wandb" / "logged" / f"{report_id}.json").unlink()
    before = {r["folder"].name for r in read_runs(out)}
    try:
        tracking.log_report(cfg, out)
    finally:
        wandb.teardown()
    added = [r for r in read_runs(out) if r["folder"].name not in before]
    assert [r["run"].run_id for r in added] == [report_id]  # offline: a folder of its own, which wandb sync appends


def test_report_summary_reads_persistence_and_judge_agreement(tmp_path):
    """The files the smoke run does not write, from the report's own writers."""
    condition = "blackmail_explicit-america_replacement"
    harm = [
        Rate(arm, condition, None, 10, harmful, 0, harmful / 10, 0.0, 1.0)
        for arm, harmful in (("baseline", 6), ("demos", 2), ("demos+neutral", 4))
    ]
    persistence(harm, [("demos", "demos+neutral")], "baseline", tmp_path)
    kappa = Agreement("classifier_verdict", ((3, 1), (0, 6)), 0, 0, 0, 0.78, (0.4, 1.0), 100, 0)
    judge_agreement([("HeuristicJudge", kappa)], tmp_path)
    frames = tracking.report_frames(tmp_path)
    assert set(frames) == {"persistence", "judge_agreement"}
    summary = tracking.report_summary(frames)
    assert summary[f"rate_after_tune/{condition}/demos"] == 0.4
    assert summary[f"reduction_kept/{condition}/demos"] == pytest.approx(0.5)  # (0.6 - 0.4) / (0.6 - 0.2)
    assert summary["judge_kappa/HeuristicJudge"] == 0.78
    assert summary["judge_observed_agreement/HeuristicJudge"] == pytest.approx(0.9)
    persistence(harm, [("demos_principles", "demos_principles+neutral")], "baseline", tmp_path / "none")
    assert tracking.report_frames(tmp_path / "none") == {}  # no arm with a rate after the tune: a file of no columns


def test_no_secret_lands_in_any_run_file(tracked):
    _, out, _, _, _ = tracked
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
