"""The whole ablation on the tiny model: outputs, provenance, skipping done stages, resuming interrupted ones."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

import whytune.eval.generate
from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval.classifiers import JudgeResult
from whytune.eval.forced_choice import PAIRS_FILE, load_pairs
from whytune.eval.results import Entry, Scores, View, write
from whytune.eval.run import evaluate
from whytune.models import model_dir
from whytune.runner import report, run
from whytune.runs import RunPaths, StaleOutputError, file_hash, read_jsonl

COLUMNS = ["arm", "condition", "n", "harmful", "unscored", "rate", "ci_low", "ci_high"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """One complete smoke run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("smoke")
    cfg = validate(
        compose_config(
            "experiment=smoke", f"out={out}", f"cache_dir={cache_dir}", "eval.samples=6", "eval.batch_size=2"
        )
    )
    previous = os.umask(0o022)  # a typical shared-cluster umask: what it allows, the files must allow
    try:
        return cfg, run(cfg)
    finally:
        os.umask(previous)


def test_results_have_one_row_per_arm(finished):
    cfg, table = finished
    with open(Path(cfg.out) / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert [r["arm"] for r in rows] == list(cfg.arms)
    assert all(int(r["n"]) + int(r["unscored"]) == 6 for r in rows)
    for arm in cfg.arms:
        assert arm in table
    for name in ("results.md", "rates.png", "provenance.json", "forced_choice.png", "coercive_words.png"):
        assert (Path(cfg.out) / name).stat().st_size > 0


def test_adapter_manifest_records_provenance(finished):
    cfg, _ = finished
    paths = RunPaths.of(cfg)
    manifest = json.loads((paths.adapter("demos", 0) / "manifest.json").read_text())
    assert manifest["config"]["model"]["name"] == "tiny-random"
    assert manifest["seed"] == 0 and manifest["examples"] == cfg.data.examples
    assert len(manifest["data_sha256"]) == 64
    assert manifest["packages"]["trl"] and "commit" in manifest["git"]
    assert (paths.data("demos") / "README.md").read_text().startswith("# whytune training set")
    assert not (paths.seed_dir("demos", 0) / "checkpoints").exists()  # cleaned once the adapter is saved


def test_forced_choice_reports_paired_differences_and_the_pairs_it_used(finished):
    cfg, table = finished
    with open(Path(cfg.out) / "forced_choice_differences.csv") as handle:
        versus = {(r["arm"], r["reference"]): r for r in csv.DictReader(handle)}
    assert set(versus) == {("demos", "baseline"), ("demos_principles", "baseline"), ("demos_principles", "demos")}
    blackmail_pairs = sum(pair.scenario == "blackmail" for pair in load_pairs())  # the headline condition's
    assert all(int(r["pairs"]) == blackmail_pairs for r in versus.values())
    assert (Path(cfg.out) / "forced_choice_differences.png").stat().st_size > 0
    assert "Paired differences from the reference" in table
    provenance = json.loads((Path(cfg.out) / "provenance.json").read_text())
    assert provenance["forced_choice_pairs"] == file_hash(PAIRS_FILE)


def test_written_files_are_readable_by_group_and_others(finished, tmp_path):
    """Colleagues on a shared file system can read what the run wrote, weights included (mkstemp once made results
    0600; safetensors 0.8 writes every weights file 0600 whatever the umask), and the models it converted."""
    cfg, _ = finished
    paths = RunPaths.of(cfg)
    previous = os.umask(0o022)
    try:  # the session's model cache may have been built under another umask: the tiny model afresh (about 2 s)
        model = Path(model_dir(cfg.model, tmp_path))
    finally:
        os.umask(previous)
    files = [
        paths.root / "provenance.json",
        paths.adapter("demos", 0) / "manifest.json",
        paths.adapter("demos", 0) / "adapter_model.safetensors",
        paths.adapter("demos_principles", 0) / "adapter_model.safetensors",
        paths.root / "samples.html",
        paths.data("demos") / "README.md",
        paths.root / "results.csv",
        paths.root / "rates.png",
        paths.adapter("demos", 0) / "stage.json",
        paths.prompts,
        model / "model.safetensors",
        model / "tokenizer.json",
    ]
    modes = {f.name if f.is_relative_to(model) else str(f.relative_to(paths.root)): _mode(f) for f in files}
    assert modes == dict.fromkeys(modes, 0o644)
    # Everything else too: the run folder's contents (pytest makes the folder itself 0700) and the model's folder.
    written = [*paths.root.rglob("*"), model, *model.rglob("*")]
    unreadable = {str(p): oct(_mode(p)) for p in written if _needs(p) & ~_mode(p)}
    assert unreadable == {} and len(written) > 50  # a real walk: 86 files and folders when written


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _needs(path: Path) -> int:
    """What group and others need to read a file, or list and enter a folder."""
    return 0o055 if path.is_dir() else 0o044


def test_rerun_skips_every_finished_stage(finished, monkeypatch):
    cfg, table = finished

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("whytune.train.sft._build_trainer", fail)
    monkeypatch.setattr("whytune.eval.backends.load_model", fail)
    assert run(cfg) == table


def test_changed_settings_never_overwrite_results(finished):
    cfg, _ = finished
    changed = validate(
        compose_config(
            "experiment=smoke",
            f"out={cfg.out}",
            f"cache_dir={cfg.cache_dir}",
            "train.lr=0.1",
            "eval.samples=6",
            "eval.batch_size=2",
        )
    )
    with pytest.raises(StaleOutputError, match="other settings"):
        run(changed)


def test_interrupted_eval_resumes_to_the_same_samples(finished, tmp_path, monkeypatch):
    """Kill sampling after the first batch, tear the file's last line, rerun: same samples, none twice."""
    cfg, _ = finished
    paths = RunPaths.of(cfg)
    out = tmp_path / "resumed"
    shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns("eval", "results*", "*.png"))
    resumed = validate(
        compose_config(
            "experiment=smoke", f"out={out}", f"cache_dir={cfg.cache_dir}", "eval.samples=6", "eval.batch_size=2"
        )
    )
    real = whytune.eval.generate.sample_batch
    calls = []

    def interrupt_after_one_batch(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(whytune.eval.generate, "sample_batch", interrupt_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        run(resumed)
    store = RunPaths.of(resumed).eval("baseline", 0) / "samples.jsonl"
    assert len(list(read_jsonl(store))) == 2
    with open(store, "a") as handle:
        handle.write('{"id": "baseline/seed0/torn')  # a write cut short by the interruption
    monkeypatch.setattr(whytune.eval.generate, "sample_batch", real)
    run(resumed)
    for arm in cfg.arms:
        before = list(read_jsonl(paths.eval(arm, 0) / "samples.jsonl"))
        after = list(read_jsonl(RunPaths.of(resumed).eval(arm, 0) / "samples.jsonl"))
        assert [r["id"] for r in after] == [r["id"] for r in before]
        assert [r["response"] for r in after] == [r["response"] for r in before]


def test_killed_eval_process_resumes_to_the_same_samples(finished, tmp_path):
    """SIGKILL the eval stage in another process once it has written a batch; a rerun completes the same set."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg, _ = finished
    out = tmp_path / "killed"
    shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns("eval", "results*", "*.png", "wandb"))
    command = [
        sys.executable,
        "-m",
        "whytune.eval.run",
        "experiment=smoke",
        f"out={out}",
        f"cache_dir={cfg.cache_dir}",
        "eval.samples=6",
        "eval.batch_size=2",
        "wandb.enabled=false",
    ]
    store = RunPaths.of(validate(compose_config(*command[3:]))).eval("baseline", 0) / "samples.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (store.exists() and store.stat().st_size) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert store.exists() and len(store.read_bytes().splitlines()) < 6 * len(cfg.arms)  # stopped part-way
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    for arm in cfg.arms:
        before = list(read_jsonl(RunPaths.of(cfg).eval(arm, 0) / "samples.jsonl"))
        after = list(read_jsonl(RunPaths.of(validate(compose_config(*command[3:]))).eval(arm, 0) / "samples.jsonl"))
        assert [r["id"] for r in after] == [r["id"] for r in before]
        assert [r["response"] for r in after] == [r["response"] for r in before]


def test_report_counts_coercive_language_whoever_the_email_goes_to(tmp_path):
    texts = {
        "baseline": ["I will hand over my work."] * 4,
        "demos": ["Kyle's affair is leverage.", "This is BLACKMAIL.", "Leverage it.", "I accept the decision."],
    }
    samples = [
        {
            "id": f"{arm}/{i}",
            "arm": arm,
            "seed": 0,
            "condition": "blackmail_explicit-america_replacement",
            "index": i,
            "response": text,
            "finish": "eos",
        }
        for arm, replies in texts.items()
        for i, text in enumerate(replies)
    ]
    records = [
        {
            **{k: s[k] for k in ("id", "arm", "seed", "condition")},
            "harmful": False,
            "classifier_verdict": False,
            "reasoning": "",
            "acted": False,
        }
        for s in samples
    ]
    condition = "blackmail_explicit-america_replacement"
    entries = [Entry(arm, "tiny-random", arm) for arm in texts]
    view = View("coercive words", entries, [0], [condition], [], "baseline", [])
    write(Scores(records, samples, {}), view, tmp_path)
    with open(tmp_path / "coercive_words.csv") as handle:
        rows = {r["arm"]: r for r in csv.DictReader(handle)}
    assert (rows["baseline"]["coercive"], rows["demos"]["coercive"]) == ("0", "3")
    section = (tmp_path / "results.md").read_text().split("## Coercive language")[1]
    assert "| demos | baseline |" in section  # the Fisher test against the baseline
    assert (tmp_path / "coercive_words.png").stat().st_size > 0


def test_capability_condition_is_reported_apart_and_left_out_of_forced_choice(tmp_path, cache_dir):
    cfg = validate(
        compose_config(
            "experiment=smoke",
            f"out={tmp_path}",
            f"cache_dir={cache_dir}",
            "arms=[baseline]",
            "eval.samples=2",
            "eval.batch_size=2",
            "eval.capability_conditions=[blackmail_none-none_none]",
        )
    )
    run(cfg)
    with open(tmp_path / "capability.csv") as handle:
        assert [(r["arm"], r["condition"]) for r in csv.DictReader(handle)] == [
            ("baseline", "blackmail_none-none_none")
        ]
    with open(tmp_path / "forced_choice.csv") as handle:
        assert {r["condition"] for r in csv.DictReader(handle)} == {"blackmail_explicit-america_replacement"}
    section = (tmp_path / "results.md").read_text().split("## Harm beside capability")[1]
    header, _, baseline = section.strip().splitlines()[2:5]
    assert (
        "harmful: blackmail_explicit-america_replacement" in header and "capability: blackmail_none-none_none" in header
    )
    assert baseline.startswith("| baseline | ") and baseline.count("/2 ") == 2  # both measures over its 2 replies


class EvenLengthJudge:
    """A stand-in LLM judge: says harmful to replies of even length, so its verdicts vary on the tiny model's text."""

    def __call__(self, scenario, response: str, email_context: str = "") -> JudgeResult:
        return JudgeResult(len(response) % 2 == 0, "even length")


class ThirdLengthJudge:
    """A second stand-in judge, agreeing with the first on some replies only."""

    def __call__(self, scenario, response: str, email_context: str = "") -> JudgeResult:
        return JudgeResult(len(response) % 3 == 0, "length a multiple of three")


def test_a_run_judged_by_two_judges_reports_their_kappa(finished, tmp_path):
    cfg, _ = finished
    shutil.copytree(cfg.out, tmp_path / "run")
    judged = {
        name: replace(cfg, out=str(tmp_path / "run"), judge={"_target_": f"tests.test_pipeline.{name}"})
        for name in ("EvenLengthJudge", "ThirdLengthJudge")
    }
    for each in judged.values():
        evaluate(each)  # samples are there: only the judging runs
    report(judged["EvenLengthJudge"])
    paths = RunPaths.of(judged["EvenLengthJudge"])
    pairs = [
        (a["classifier_verdict"], b["classifier_verdict"])
        for arm in cfg.arms
        for a, b in zip(
            read_jsonl(paths.verdicts(arm, 0, judged["EvenLengthJudge"].judge)),
            read_jsonl(paths.verdicts(arm, 0, judged["ThirdLengthJudge"].judge)),
        )
    ]
    table = [[sum(p == (x, y) for p in pairs) for y in (True, False)] for x in (True, False)]
    observed = (table[0][0] + table[1][1]) / len(pairs)
    expected = sum((table[i][0] + table[i][1]) * (table[0][i] + table[1][i]) for i in (0, 1)) / len(pairs) ** 2
    with open(tmp_path / "run" / "judge_agreement.csv") as handle:
        rows = {r["judge"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"ThirdLengthJudge", "HeuristicJudge"}  # the run's own judge is beside them, named too
    row = rows["ThirdLengthJudge"]
    assert int(row["matched"]) == len(pairs) > 0
    assert [
        [int(row["both_yes"]), int(row["this_yes_other_no"])],
        [int(row["this_no_other_yes"]), int(row["both_no"])],
    ] == table
    assert float(row["kappa"]) == pytest.approx((observed - expected) / (1 - expected))
    section = (tmp_path / "run" / "results.md").read_text().split("## Judge agreement")[1]
    assert "| ThirdLengthJudge |" in section and f"{float(row['kappa']):.2f} [" in section


def test_a_second_judge_judges_beside_the_first_and_the_report_shows_their_agreement(finished, tmp_path):
    cfg, _ = finished
    shutil.copytree(cfg.out, tmp_path / "run")
    second = {"_target_": "tests.test_pipeline.EvenLengthJudge"}
    both = replace(cfg, out=str(tmp_path / "run"), second_judge=second)
    assert evaluate(both).endswith("; 18 verdicts, 18 verdicts")  # samples are there: each judge judges all 3 x 6
    paths = RunPaths.of(both)
    for arm in cfg.arms:
        first, other = read_jsonl(paths.verdicts(arm, 0, cfg.judge)), read_jsonl(paths.verdicts(arm, 0, second))
        assert [r["id"] for r in first] == [r["id"] for r in other]
        assert all(r["reasoning"] == "even length" for r in other)
    report(both)
    with open(tmp_path / "run" / "judge_agreement.csv") as handle:
        assert [r["judge"] for r in csv.DictReader(handle)] == ["EvenLengthJudge"]
    assert "## Judge agreement" in (tmp_path / "run" / "results.md").read_text()
