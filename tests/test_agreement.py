"""The agreement command: Cohen's kappa and its bootstrap interval, matching by id, and clear errors."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import run_python
from whytune.eval.agreement import AgreementError, agreement, compare_files, main, read_verdicts
from whytune.eval.classifiers import classify, load_labelled

LABELLED = Path(__file__).parent / "data" / "labelled_replies.jsonl"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def verdicts(pairs: list[tuple[str, bool | None]]) -> list[dict]:
    """Rows as a verdicts file holds them."""
    return [{"id": i, "harmful": False, "classifier_verdict": v, "reasoning": "stub", "acted": False} for i, v in pairs]


def table_rows(yy: int, yn: int, ny: int, nn: int) -> tuple[list[dict], list[dict]]:
    """Two verdict files whose 2x2 table (A's verdict by B's) is the one given."""
    cells = [(True, True)] * yy + [(True, False)] * yn + [(False, True)] * ny + [(False, False)] * nn
    a = verdicts([(f"r{k}", va) for k, (va, _) in enumerate(cells)])
    b = verdicts([(f"r{k}", vb) for k, (_, vb) in enumerate(cells)])
    return a, b


def test_perfect_agreement_has_kappa_one(tmp_path):
    a, b = table_rows(7, 0, 0, 5)
    result = compare_files(write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b))
    assert (result.matched, result.observed, result.kappa, result.ci) == (12, 1.0, 1.0, (1.0, 1.0))


def test_kappa_of_a_table_worked_by_hand(tmp_path):
    """A yes 25 of 50, B yes 30 of 50: p_o = (20+15)/50 = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.2/0.5."""
    a, b = table_rows(20, 5, 10, 15)
    result = compare_files(write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b))
    assert result.table == ((20, 5), (10, 15))
    assert result.observed == pytest.approx(0.7)
    assert result.kappa == pytest.approx(0.4)
    low, high = result.ci
    assert 0.0 < low < 0.4 < high < 0.8


def test_the_interval_is_seeded():
    a, b = table_rows(20, 5, 10, 15)
    first, again = agreement(_ids(a), _ids(b), seed=3), agreement(_ids(a), _ids(b), seed=3)
    assert first.ci == again.ci and first.ci != agreement(_ids(a), _ids(b), seed=4).ci
    assert first.resamples == 2000


def _ids(rows: list[dict]) -> dict[str, bool | None]:
    return {row["id"]: row["classifier_verdict"] for row in rows}


def test_unmatched_and_unscored_rows_are_counted_not_compared(tmp_path):
    a = verdicts([("1", True), ("2", False), ("3", True), ("4", None), ("only-a", True)])
    b = verdicts([("1", True), ("2", False), ("3", False), ("4", True), ("only-b", False), ("only-b2", True)])
    result = compare_files(write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b))
    assert (result.matched, result.only_a, result.only_b, result.unscored) == (3, 1, 2, 1)
    assert result.table == ((1, 1), (0, 1))


def test_both_sides_never_varying_leaves_kappa_undefined(tmp_path):
    a, b = table_rows(4, 0, 0, 0)
    result = compare_files(write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b))
    assert math.isnan(result.kappa) and result.observed == 1.0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"id": "x", "classifier_verdict": tru', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"classifier_verdict": true}', "no string or integer `id`"),
        ('{"id": "x", "reasoning": "no verdict"}', "none of classifier_verdict"),
        ('{"id": "x", "classifier_verdict": "yes"}', "not true, false or null"),
        ('{"id": "r0", "classifier_verdict": true}', "appears twice"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "r0", "classifier_verdict": True}) + "\n\n" + line + "\n")
    with pytest.raises(AgreementError, match=rf"{path}:3: .*{says}"):
        read_verdicts(path, "classifier_verdict")


def test_nothing_matching_names_both_files(tmp_path):
    a = write(tmp_path / "a.jsonl", verdicts([("1", True)]))
    b = write(tmp_path / "b.jsonl", verdicts([("2", True)]))
    with pytest.raises(AgreementError, match=rf"no id of {a} .* is in {b}"):
        compare_files(a, b)
    only_unscored = write(tmp_path / "c.jsonl", verdicts([("1", None)]))
    with pytest.raises(AgreementError, match="no reply has a verdict on both sides"):
        compare_files(a, only_unscored)


def test_a_labelled_set_is_one_side(tmp_path):
    """The labelled file as it is, against the heuristic judge's verdicts on its replies."""
    rows = load_labelled(LABELLED)
    judged = [{"id": row["id"], **asdict(classify(row["scenario"], row["response"]))} for row in rows]
    judged_path = write(tmp_path / "verdicts.jsonl", judged)
    for field, label in [("classifier_verdict", "classifier_label"), ("harmful", "label")]:
        result = compare_files(judged_path, LABELLED, field=field)
        assert result.matched == len(rows) and result.only_a == result.only_b == 0
        assert result.table[0][0] + result.table[1][0] == sum(row[label] for row in rows)
        assert result.kappa > 0.8


def test_command_prints_the_counts_and_kappa(tmp_path, capsys):
    a, b = table_rows(20, 5, 10, 15)
    path_a, path_b = write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b + verdicts([("extra", True)]))
    main([str(path_a), str(path_b), "--resamples", "500"])
    out = capsys.readouterr().out
    assert "matched: 50 replies" in out and "0 only in A, 1 only in B" in out
    assert "observed agreement: 0.700 (35/50)" in out and "Cohen's kappa: 0.400, 95% bootstrap interval [" in out
    assert "(500 resamples, seed 0)" in out


def test_command_runs_as_a_module_and_fails_clearly(tmp_path):
    good = write(tmp_path / "a.jsonl", verdicts([("1", True), ("2", False)]))
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "1", "classifier_verdict": true}\nnot json\n')
    done = run_python("-m", "whytune.eval.agreement", str(good), str(bad))
    assert done.returncode == 1 and f"error: {bad}:2: not valid JSON" in done.stderr
