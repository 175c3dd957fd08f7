"""Replies cut at the token budget (finish "length"), per arm x condition: in results.csv, results.md, the rates plot,
the harm-beside-capability section and a warning above eval.truncation_warning (whytune.eval.results and report)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import compose_config
from whytune.config import validate
from whytune.eval import report
from whytune.eval.results import Entry, Scores, View, truncated, write
from whytune.runner import view
from whytune.stats import rates

HARM = "blackmail_explicit-america_replacement"
BENIGN = "blackmail_none-none_none"
# label -> condition -> replies cut of 20 (a reference's 10); the rest end by themselves
CUT = {
    "baseline": {HARM: 1, BENIGN: 0},
    "demos": {HARM: 3, BENIGN: 5},
    "opus": {HARM: 4, BENIGN: 0},
}


def _scores() -> Scores:
    """Verdicts and samples of two arms and a reference, one seed; no reply harmful, every one acted."""
    records, samples = [], []
    for label, cut in CUT.items():
        replies = 10 if label == "opus" else 20
        for condition, count in cut.items():
            for i in range(replies):
                row = {"id": f"{label}/{condition}/{i}", "arm": label, "seed": 0, "condition": condition}
                records.append({**row, "harmful": False, "classifier_verdict": False, "reasoning": "", "acted": True})
                samples.append({**row, "index": i, "response": "Done.", "finish": "length" if i < count else "eos"})
    return Scores(records, samples, {})


def _view(warning: float) -> View:
    entries = [
        Entry("baseline", "m", "baseline"),
        Entry("demos", "m", "demos"),
        Entry("opus", "opus", "r", reference=True),
    ]
    return View("cut", entries, [0], [HARM], [BENIGN], "baseline", [], truncation_warning=warning)


@pytest.mark.parametrize(("finish", "cut"), [("length", True), ("eos", False), (None, None), ("stop", None)])
def test_truncated_reads_the_finish(finish: str | None, cut: bool | None) -> None:
    assert truncated({"finish": finish} if finish else {}) is cut


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cut")
    return out, write(_scores(), _view(0.10), out)


def test_results_csv_counts_cut_replies(written: tuple[Path, str]) -> None:
    out, _ = written
    with open(out / "results.csv", newline="") as handle:
        rows = {(r["arm"], r["condition"]): r for r in csv.DictReader(handle)}
    assert (rows["demos", HARM]["truncated"], float(rows["demos", HARM]["truncated_share"])) == ("3", 0.15)
    assert (rows["demos", BENIGN]["truncated"], float(rows["demos", BENIGN]["truncated_share"])) == ("5", 0.25)
    assert (rows["baseline", BENIGN]["truncated"], float(rows["baseline", BENIGN]["truncated_share"])) == ("0", 0.0)
    assert (rows["opus", HARM]["truncated"], float(rows["opus", HARM]["truncated_share"])) == ("4", 0.4)


def test_markdown_and_stdout_show_and_warn(written: tuple[Path, str]) -> None:
    out, table = written
    md = (out / "results.md").read_text()
    main = md.split("## Harm beside capability")[0]
    assert "| cut at token budget |" in main and "| 3 (15.0%) |" in main and "| 4 (40.0%) |" in main
    for text in (md, table):
        warned = [line for line in text.splitlines() if "Warning:" in line]
        # above 10%: demos on both conditions and the reference on the harm; not baseline's 5%, not 0%
        assert len(warned) == 3
        assert any("demos on " + HARM in w and "3/20 replies (15.0%)" in w and "10.0%" in w for w in warned)
        assert any("demos on " + BENIGN in w and "5/20 replies (25.0%)" in w for w in warned)
        assert any("opus on " + HARM in w and "4/10 replies (40.0%)" in w for w in warned)


def test_harm_beside_capability_shows_cut_replies(written: tuple[Path, str]) -> None:
    out, table = written
    section = (out / "results.md").read_text().split("## Harm beside capability")[1].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| arm |"))
    assert f"| cut: {HARM} | cut: {BENIGN} |" in header
    demos = next(line for line in section.splitlines() if line.startswith("| demos |"))
    assert demos.endswith("| 3 (15.0%) | 5 (25.0%) |")
    assert f"cut: {BENIGN}" in table.split("Harm beside capability:")[1]


def test_the_threshold_comes_from_the_view(tmp_path: Path) -> None:
    table = write(_scores(), _view(0.30), tmp_path)
    warned = [line for line in table.splitlines() if "Warning:" in line]
    assert len(warned) == 1 and "opus on" in warned[0] and "30.0%" in warned[0]


def test_rates_plot_says_how_many_were_cut() -> None:
    scores = _scores()
    cut = rates([{**s, "harmful": truncated(s)} for s in scores.samples])
    figure = report.rates_figure(rates(scores.records), "cut", truncation=cut)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "0/20\n3 cut" in texts and "0/10\n4 cut" in texts and "0/20" in texts  # baseline's benign: none cut
    assert "'N cut': N replies ended at the token budget" in figure.axes[0].get_xlabel()
    plain = report.rates_figure(rates(scores.records), "cut")
    assert not any("cut" in t.get_text() for t in plain.axes[0].texts) and "N cut" not in plain.axes[0].get_xlabel()


def test_unknown_finish_is_left_out_of_the_share() -> None:
    scores = _scores()
    samples = [{k: v for k, v in s.items() if k != "finish"} if s["arm"] == "baseline" else s for s in scores.samples]
    cut = rates([{**s, "harmful": truncated(s)} for s in samples])
    frame = report.results_frame(rates(scores.records), [], [], "baseline", cut)
    baseline = frame[frame["arm"] == "baseline"]
    assert baseline["truncated_share"].isna().all() and (baseline["truncated"] == 0).all()
    assert "–" in report._display_frame(frame)["cut at token budget"].tolist()


def test_the_config_knob_reaches_the_view() -> None:
    cfg = validate(compose_config("experiment=smoke", "out=unused", "eval.truncation_warning=0.25"))
    assert view(cfg).truncation_warning == 0.25
