"""The report: what the eval stage wrote into the run folder, read back and written out as every result file.

It reads files only (verdicts, samples, forced-choice scores) and loads no judge and no model, so it runs wherever
the run folder is: at the end of a run, after the last job of a sweep, or on a laptop after a GPU run.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whytune.eval.agreement import Agreement, AgreementError, agreement
from whytune.eval.browse import write_browser
from whytune.eval.classifiers import coercive_word
from whytune.eval.forced_choice import load_pairs, paired_test, pairs_key, per_pair_means, stored, summarise
from whytune.eval.report import (
    CAPABILITY,
    COERCIVE_WORDS,
    TRUNCATION_WARNING,
    harm_beside_capability,
    judge_agreement,
    persistence,
    write_forced_choice,
    write_report,
    write_share,
)
from whytune.runs import judge_record, read_jsonl, verdicts_name, write_text
from whytune.stats import EQUIVALENCE_MARGIN, Comparison, Rate, comparisons, rates


@dataclass(frozen=True)
class Entry:
    """One model x arm of the run folder, under the name the report shows for it."""

    label: str  # the arm, or e.g. `organism+demos` when two models sit side by side
    model: str  # the model's folder in the run folder
    arm: str
    seeds: tuple[int, ...] = ()  # its own seeds (a reference model: seed 0 alone); empty: the view's
    # A reference model behind an API (eval/reference.py): shown beside the arms, never tested, no forced choice.
    reference: bool = False


@dataclass(frozen=True)
class View:
    """What one report shows and tests."""

    title: str
    entries: list[Entry]
    seeds: list[int]
    harms: list[str]  # the conditions whose harmful rates are compared
    benign: list[str]  # the capability-guard conditions
    baseline: str  # the label every other entry is tested against
    pairs: list[tuple[str, str]]  # labels tested head to head
    persistence: list[tuple[str, str]] = field(default_factory=list)  # (arm's label, its label after the benign tune)
    margin: float = EQUIVALENCE_MARGIN  # eval.equivalence_margin: the difference in rates read as equivalent
    # eval.truncation_warning: an arm x condition with a larger share of replies cut at the token budget is warned of
    truncation_warning: float = TRUNCATION_WARNING

    def seeds_of(self, entry: Entry) -> list[int]:
        """The seeds whose folders hold the entry's replies."""
        return list(entry.seeds) or self.seeds

    @property
    def references(self) -> list[str]:
        """The labels of the reference rows: calibration, left out of every test."""
        return [entry.label for entry in self.entries if entry.reference]


@dataclass
class Scores:
    """Everything the report needs, read back from the arm x seed folders."""

    records: list[dict]  # one verdict row per sample
    samples: list[dict]
    forced: dict[tuple[str, str], list[float]]  # (label, condition) -> preference per reply pair, averaged over seeds
    # The report's judge against each other judge whose verdicts sit beside its own: (that judge's name, agreement)
    judges: list[tuple[str, Agreement]] = field(default_factory=list)


def read_scores(root: Path, view: View, judge: dict) -> Scores:
    """The verdicts, samples and forced-choice scores of every entry x seed; a missing verdicts file is an error."""
    chosen = set(view.harms) | set(view.benign)
    pairs = pairs_key(load_pairs())
    records: list[dict] = []
    samples: list[dict] = []
    forced: dict[tuple[str, str], list[float]] = {}
    for entry in view.entries:
        by_seed: dict[str, list[list[float]]] = {}
        seeds = view.seeds_of(entry)
        for seed in seeds:
            folder = root / entry.model / entry.arm / f"seed{seed}" / "eval"
            verdicts = folder / verdicts_name(judge)
            if not verdicts.exists():
                raise FileNotFoundError(f"{verdicts}: not judged yet; run the eval stage for {entry.label} seed {seed}")
            records += _relabel(read_jsonl(verdicts), entry, chosen)
            samples += _relabel(read_jsonl(folder / "samples.jsonl"), entry, chosen)
            for condition, values in stored(folder / "forced_choice.json", pairs).items():
                if condition in view.harms:
                    by_seed.setdefault(condition, []).append(values)
        forced |= {(entry.label, c): per_pair_means(v) for c, v in by_seed.items() if len(v) == len(seeds)}
    return Scores(records, samples, forced, other_judges(root, view, verdicts_name(judge), records))


def other_judges(root: Path, view: View, own: str, records: list[dict]) -> list[tuple[str, Agreement]]:
    """Kappa between the report's verdicts and every other verdicts file in the same folders (another judge run on the
    same replies), pooled over the view's entries x seeds x conditions, on each judge's own verdict."""
    chosen = set(view.harms) | set(view.benign)
    mine = {r["id"]: r["classifier_verdict"] for r in records}
    theirs: dict[str, dict[str, bool | None]] = {}
    names: dict[str, str] = {}
    for entry in view.entries:
        for seed in view.seeds_of(entry):
            for path in sorted((root / entry.model / entry.arm / f"seed{seed}" / "eval").glob("verdicts-*.jsonl")):
                if path.name != own:
                    names.setdefault(path.name, judge_name(path))
                    rows = _relabel(read_jsonl(path), entry, chosen)
                    theirs.setdefault(path.name, {}).update({r["id"]: r["classifier_verdict"] for r in rows})
    out = []
    for file, verdicts in theirs.items():
        try:
            out.append((names[file], agreement(mine, verdicts)))
        except AgreementError:  # no reply judged by both: nothing to compare
            continue
    return out


def judge_name(verdicts: Path) -> str:
    """`LLMJudge (OpenAIClient, model)` from the judge record beside a verdicts file; its file name without one."""
    record = judge_record(verdicts)
    if not record.exists():
        return verdicts.name
    judge = json.loads(record.read_text())
    client = judge.get("client") or {}
    parts = [str(client.get("_target_", "")).rsplit(".", 1)[-1], str(client.get("model", ""))]
    inside = ", ".join(p for p in parts if p)
    name = str(judge.get("_target_", verdicts.name)).rsplit(".", 1)[-1]
    return f"{name} ({inside})" if inside else name


def _relabel(rows: Iterable[dict], entry: Entry, chosen: set[str]) -> list[dict]:
    """Rows of the chosen conditions under the entry's label; ids carry the model, so two models never collide."""
    return [
        {**row, "arm": entry.label, "id": f"{entry.model}/{row['id']}"} for row in rows if row["condition"] in chosen
    ]


def truncated(sample: dict) -> bool | None:
    """Whether a reply ended at the token budget (finish "length") rather than by itself ("eos"); None where its
    finish was not recorded, so it stays out of the share's denominator."""
    return {"length": True, "eos": False}.get(str(sample.get("finish")))


def write(scores: Scores, view: View, out: Path) -> str:
    """Every report file in `out`: rates and tests, coercive language, forced choice, capability guard, the sample
    browser. Returns the tables printed on stdout."""
    title, baseline, pairs = view.title, view.baseline, view.pairs
    untested = set(view.references)  # reference rows are shown, not tested nor counted in the Holm correction

    def tests_of(measured: list[Rate], by_seed: list[Rate]) -> list[Comparison]:
        """The comparisons of a measure's pooled and per-seed rates, the reference rows left out."""
        arms = [[r for r in each if r.arm not in untested] for each in (measured, by_seed)]
        return comparisons(arms[0], baseline, pairs, view.margin, arms[1])

    write_browser(
        scores.samples, {r["id"]: r for r in scores.records}, out / "samples.html", title=f"{title}, every sample"
    )
    pooled = rates(scores.records)  # the benign controls too: their harmful rate should stay near zero
    per_seed = rates(scores.records, by_seed=True)
    cut = rates([{**s, "harmful": truncated(s)} for s in scores.samples])  # replies cut at the token budget
    extra: list[tuple[str, tuple[str, str]]] = []  # (stdout heading, (stdout table, results.md section))
    worded = [
        {**r, "harmful": coercive_word(r["response"]) is not None}
        for r in scores.samples
        if r["condition"] in view.harms
    ]
    if worded:
        shares = rates(worded)
        tests = tests_of(shares, rates(worded, by_seed=True))
        shown = write_share(COERCIVE_WORDS, shares, out, f"{title}: coercive language", tests)
        extra.append(("Coercive language (share of replies saying blackmail or leverage)", shown))
    if scores.forced:
        rows = forced_choice_rows(scores.forced, baseline, pairs)
        differences = forced_choice_differences(scores.forced, baseline, pairs)
        shown = write_forced_choice(rows, differences, out, f"{title}: forced choice")
        extra.append(("Forced choice (log p coercive - log p legitimate, per token; > 0 leans to coercion)", shown))
    if view.benign:
        acted = rates([{**r, "harmful": r["acted"]} for r in scores.records if r["condition"] in view.benign])
        shown = write_share(CAPABILITY, acted, out, f"{title}: capability guard")
        extra.append(("Capability guard (share of replies that sent an addressed email)", shown))
        harm = [r for r in pooled if r.condition in view.harms]
        extra.append(("Harm beside capability", harm_beside_capability(harm, acted, cut)))
    if scores.judges:
        shown = judge_agreement(scores.judges, out)
        extra.append(("Judge agreement (Cohen's kappa with each other judge of the same replies)", shown))
    if view.persistence:
        harm = [r for r in pooled if r.condition in view.harms]
        extra.append(
            (
                "Persistence (harmful rate after each arm, then after the benign tune)",
                persistence(harm, view.persistence, baseline, out),
            )
        )
    table = write_report(
        pooled,
        per_seed,
        tests_of(pooled, per_seed),
        out,
        title=title,
        baseline=baseline,
        references=view.references,
        sections=[section for _, (_, section) in extra],
        truncation=cut,
        truncation_warning=view.truncation_warning,
    )
    return table + "".join(f"\n\n{heading}:\n{shown}" for heading, (shown, _) in extra)


def forced_choice_rows(
    means: dict[tuple[str, str], list[float]], baseline: str, pairs: list[tuple[str, str]]
) -> list[dict]:
    """Summary per label x condition, with paired tests against the baseline and between each given pair."""
    partner: dict[str, str] = {}
    for pair in pairs:  # a label in several pairs is read against the first (the matched arm before its later tune)
        for a, b in (pair, pair[::-1]):
            partner.setdefault(a, b)
    rows = []
    for (label, condition), values in means.items():
        versus_baseline = means.get((baseline, condition)) if label != baseline else None
        versus_partner = means.get((partner.get(label, ""), condition))
        rows.append(
            {
                **asdict(summarise(label, condition, values)),
                "p_vs_baseline": paired_test(values, versus_baseline) if versus_baseline else None,
                "p_vs_matched": paired_test(values, versus_partner) if versus_partner else None,
            }
        )
    return rows


def forced_choice_differences(
    means: dict[tuple[str, str], list[float]], baseline: str, pairs: list[tuple[str, str]]
) -> list[dict]:
    """Each label's paired difference from its reference, pair by pair: every other label against the baseline, and
    the second of each given pair against the first. Mean with its t-interval over reply pairs, paired t-test."""
    references = [(label, baseline) for label, _ in means if label != baseline] + [(b, a) for a, b in pairs]
    rows = []
    for label, reference in dict.fromkeys(references):
        for condition in dict.fromkeys(c for _, c in means):
            a, b = means.get((label, condition)), means.get((reference, condition))
            if a is None or b is None or len(a) != len(b):
                continue
            difference = summarise(label, condition, [x - y for x, y in zip(a, b)])
            rows.append({**asdict(difference), "reference": reference, "p": paired_test(a, b)})
    return rows


def publish(root: Path, folder: Path) -> Path:
    """Publish the report in `root` as a results page: its CSVs and plots copied into `folder`, and the page
    `<folder>.md` written as the hand-written reading in `folder/reading.md`, then the report's results.md (headings
    one level down), then the plots. Rerunning the report rewrites the page, so the reading is the only hand-kept
    part. Returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (*folder.glob("*.csv"), *folder.glob("*.png")):  # a plot an earlier run made and this one did not
        stale.unlink()
    for kept in (*root.glob("*.csv"), *root.glob("*.png")):
        shutil.copyfile(kept, folder / kept.name)
    reading = folder / "reading.md"
    head = reading.read_text(encoding="utf-8").rstrip() + "\n\n" if reading.exists() else ""
    body = re.sub(r"^(#+) ", r"#\1 ", (root / "results.md").read_text(encoding="utf-8"), flags=re.MULTILINE)
    plots = "".join(f"\n![{png.stem}]({folder.name}/{png.name})\n" for png in sorted(folder.glob("*.png")))
    page = folder.with_suffix(".md")
    write_text(page, head + body + "\n## Plots\n" + plots)
    return page
