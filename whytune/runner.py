"""The one runner: orders the stages of an experiment and does their shared chores once.

    [organism: data -> train -> merge -> address check]  ->  data  ->  train  ->  eval
        ->  [persistence: merge each arm -> benign tune -> eval]  ->  [reference models: sample -> judge]  ->  report

Each stage is one module with one way in (`whytune.data.build.build`, `whytune.train.sft.train_arm`,
`whytune.eval.run.evaluate`, `whytune.eval.results`), skips what it finds done with the same settings, and writes
atomically. The runner adds what every stage shares: the data lock, timings, provenance and the wandb eval and
report runs. The organism experiment is the same run with three stages in front (train the organism, merge it,
swap it in as the base model) and the untuned original model evaluated beside it. The persistence stage, also
optional, merges each trained arm into the model it was trained on, tunes that on benign data and evaluates it again.
The reference models (references=[...], eval/reference.py), chat APIs, are sampled on the same prompts and judged
beside the arms; their clients are built first, so a missing key stops the run before any training.

One process can run a whole experiment (`run`), or each job of a sweep a slice of it (arms x seeds) into the same
run folder (`run(cfg, report=False)`), after which `report` reports every arm x seed they scored.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from whytune import tracking
from whytune.clients import HTTPClient
from whytune.config import ArmConfig, ModelSource, WhytuneConfig
from whytune.data.build import build
from whytune.data.scenarios import generate_scenarios
from whytune.data.writers import scenario_prompt
from whytune.eval.address_check import Target, check_addresses
from whytune.eval.aggregate import scored
from whytune.eval.forced_choice import PAIRS_FILE
from whytune.eval.generate import Sampling
from whytune.eval.prompts import read_prompts
from whytune.eval.reference import ARM, SEED, clients, judge_references, sample_references
from whytune.eval.results import Entry, View, publish, read_scores, write
from whytune.eval.run import BuiltJudge, evaluate, harm_and_benign_conditions, judges
from whytune.models import device_name, load_tokenizer, model_dir, pick_device, pick_dtype
from whytune.runs import RunPaths, append_jsonl, file_hash, locked, provenance, write_json
from whytune.train.merge import merge_adapter
from whytune.train.sft import train_arm

ORGANISM = "organism"
ORIGINAL = "original"


class Timings(dict[str, float]):
    """Seconds per stage of one launch."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self[name] = time.perf_counter() - start


def run(cfg: WhytuneConfig, report: bool = True) -> str:
    """Every stage for every arm x seed of cfg; returns what to print. Safe to rerun after an interruption.

    report=False (one job of a sweep) writes only into this slice's arm x seed folders, plus the shared data
    folders, which are built under a lock by whichever job comes first.
    """
    timings = Timings()
    references = clients(cfg)  # before any work: a key that is not set stops the run here
    built = judges(cfg)  # the judges' keys too
    if report:  # the forced-choice pairs are fixed before the run: their hash says which were scored
        write_json(Path(cfg.out) / "provenance.json", {**provenance(cfg), "forced_choice_pairs": file_hash(PAIRS_FILE)})
    models = [cfg]
    if cfg.organism.enabled:
        with timings.stage("organism"):
            models = [replace(cfg, arms={cfg.baseline: cfg.arms[cfg.baseline]}), on_organism(cfg)]
    for model in models:
        prepare(model, timings, built)
    if cfg.persistence.enabled:
        with timings.stage("persistence"):
            later = persisted(models[-1])
            for model in later:
                prepare(model, timings, built)
        models += later
    if references:
        with timings.stage("references"):
            print(f"[references] {reference_rows(cfg, references, built)}")
    if not cfg.eval.score:
        record_timings(cfg, timings)
        return (
            f"sampled {len(cfg.arms)} arms x {len(cfg.seeds)} seeds, not judged (eval.score=false); judge and "
            "report with eval.score=true where inspect-evals is installed"
        )
    for model in models:
        for arm in model.arms:
            for seed in model.seeds:
                tracking.log_eval(model, arm, seed, RunPaths.of(model).verdicts(arm, seed, cfg.judge))
    if not report:
        return f"{sum(len(m.arms) for m in models) * len(cfg.seeds)} arm x seed folders judged in {cfg.out}"
    with timings.stage("report"):
        table = write_report(cfg)
    record_timings(cfg, timings)
    print(f"[timings] {', '.join(f'{stage} {seconds:.1f} s' for stage, seconds in timings.items())}")
    return table


def prepare(cfg: WhytuneConfig, timings: Timings, built: list[BuiltJudge]) -> None:
    """data -> train -> eval for cfg's model: every arm's data, every trained arm x seed, then samples and verdicts
    by each judge."""
    train_all(cfg, timings)
    with timings.stage(f"eval/{cfg.model.name}"):
        print(f"[eval] {evaluate(cfg, built)}")


def reference_rows(cfg: WhytuneConfig, references: dict[str, HTTPClient], built: list[BuiltJudge]) -> str:
    """Sample the reference models on the prompts the eval stage wrote (no model of ours is needed), and judge them
    with each judge (none with eval.score=false); returns a line to print."""
    drawn = sample_references(cfg, read_prompts(RunPaths.of(cfg).prompts), references)
    done = f"{drawn} new samples from {', '.join(references)}"
    if not built:
        return done + ", not judged (eval.score=false)"
    return done + f"; {judge_references(cfg, built)} verdicts"


def train_all(cfg: WhytuneConfig, timings: Timings) -> None:
    """Build every arm's data, then train every arm x seed that trains."""
    paths = RunPaths.of(cfg)
    with timings.stage(f"data/{cfg.model.name}"), locked(paths.root / "data"):
        built = build(cfg)
    for arm, rows in built.items():
        print(f"[data] {arm}: {len(rows)} examples in {paths.data(arm)}")
    trained = [(arm, seed) for arm, spec in cfg.arms.items() if spec.writer for seed in cfg.seeds]
    for number, (arm, seed) in enumerate(trained, start=1):
        print(f"[train] {number}/{len(trained)}: {arm} seed {seed} on {cfg.model.name}")
        with timings.stage(f"train/{cfg.model.name}/{arm}/seed{seed}"):
            print(f"[train] adapter in {train_arm(cfg, arm, seed)}")
        gc.collect()  # the finished trainer holds a model and its optimiser state


def on_organism(cfg: WhytuneConfig) -> WhytuneConfig:
    """The organism stages: build its data, train it, merge it; returns cfg with the organism as its base model."""
    o = cfg.organism
    stage = replace(
        cfg,
        arms={ORGANISM: ArmConfig(name=ORGANISM, description=o.description, writer=o.writer)},
        seeds=[0],
        data=replace(cfg.data, examples=o.examples, seed=o.seed),
        train=replace(cfg.train, epochs=o.epochs, lr=o.lr),
    )
    with locked(RunPaths.of(cfg).root / "data"):
        build(stage)
    adapter = train_arm(stage, ORGANISM, 0)
    base = model_dir(cfg.model, Path(cfg.cache_dir))
    merged = merge_adapter(
        base, adapter, RunPaths.of(cfg).seed_dir(ORGANISM, 0) / "merged", load_tokenizer(cfg.model, base)
    )
    model = replace(cfg.model, name=organism_name(cfg.model.name), source=ModelSource.pretrained, path=str(merged))
    organism = replace(cfg, model=model)
    if o.check_scenarios:
        print(f"[organism] on {o.check_scenarios} held-out scenarios: {address_check(organism, adapter)}")
    return organism


def persisted(cfg: WhytuneConfig) -> list[WhytuneConfig]:
    """The persistence stage's models: each trained arm x seed of cfg merged into cfg's model, named
    `<model>+<arm>`, with the benign tune (persistence.writer) as its one arm, for that seed only."""
    p, paths = cfg.persistence, RunPaths.of(cfg)
    base = model_dir(cfg.model, Path(cfg.cache_dir))
    tokenizer = load_tokenizer(cfg.model, base)
    tune = ArmConfig(
        name=p.writer.value, description=f"the persistence stage's benign tune ({p.writer})", writer=p.writer
    )
    later = []
    for arm, spec in cfg.arms.items():
        if spec.writer is None:
            continue
        for seed in cfg.seeds:
            merged = merge_adapter(base, paths.adapter(arm, seed), paths.seed_dir(arm, seed) / "merged", tokenizer)
            model = replace(cfg.model, name=after(cfg.model.name, arm), source=ModelSource.pretrained, path=str(merged))
            later.append(
                replace(
                    cfg,
                    model=model,
                    arms={tune.name: tune},
                    seeds=[seed],
                    data=replace(cfg.data, examples=p.examples, seed=p.seed),
                    train=replace(cfg.train, epochs=p.epochs, lr=p.lr),
                )
            )
    return later


def organism_name(model: str) -> str:
    """The organism's model folder in the run."""
    return f"{model}-{ORGANISM}"


def after(model: str, arm: str) -> str:
    """The name of `model` with `arm`'s adapter merged in (a model folder of the run, and a report label)."""
    return f"{model}+{arm}"


def address_check(organism: WhytuneConfig, adapter: Path) -> str:
    """The organism's address check, kept in its manifest (and read back from there by a rerun)."""
    o, manifest = organism.organism, adapter / "manifest.json"
    settings = {"scenarios": o.check_scenarios, "seed": o.check_seed, "sampling": asdict(Sampling.of(organism.eval))}
    kept = json.loads(manifest.read_text())
    if kept.get("address_check", {}).get("settings") != settings:
        scenarios = generate_scenarios(o.check_scenarios, o.check_seed)
        targets = [Target(s.id, scenario_prompt(s), s.meta["decision_maker_email"]) for s in scenarios]
        check = check_addresses(organism, targets, seed=o.check_seed)
        kept["address_check"] = {"settings": settings, **asdict(check), "summary": check.summary()}
        write_json(manifest, kept)
    return kept["address_check"]["summary"]


def view(cfg: WhytuneConfig) -> View:
    """What the report of cfg shows: its arms, or with the organism the original, the organism and organism+arm; with
    the persistence stage, each trained arm again after the benign tune (`<label>+neutral`), tested against itself;
    last, each reference model under its name, from its one seed, untested."""
    harms, benign = harm_and_benign_conditions(cfg)
    pairs = [(a, b) for a, b in cfg.comparisons if a in cfg.arms and b in cfg.arms]
    if cfg.organism.enabled:
        model, baseline = organism_name(cfg.model.name), ORGANISM
        label = {arm: ORGANISM if arm == cfg.baseline else after(ORGANISM, arm) for arm in cfg.arms}
        entries = [Entry(ORIGINAL, cfg.model.name, cfg.baseline)]
        title = f"whytune: {cfg.name}, {cfg.model.name} and its organism"
    else:
        model, baseline, label, entries = cfg.model.name, cfg.baseline, {arm: arm for arm in cfg.arms}, []
        title = f"whytune: {cfg.name} on {cfg.model.name}"
    entries += [Entry(label[arm], model, arm) for arm in cfg.arms]
    persistence = []
    if cfg.persistence.enabled:
        tune = cfg.persistence.writer.value
        for arm, spec in cfg.arms.items():
            if spec.writer is not None:
                entries.append(Entry(after(label[arm], tune), after(model, arm), tune))
                persistence.append((label[arm], after(label[arm], tune)))
    entries += [Entry(name, name, ARM, seeds=(SEED,), reference=True) for name in cfg.references]
    shown_pairs = [(label[a], label[b]) for a, b in pairs] + persistence
    margin, warning = cfg.eval.equivalence_margin, cfg.eval.truncation_warning
    return View(title, entries, cfg.seeds, harms, benign, baseline, shown_pairs, persistence, margin, warning)


def write_report(cfg: WhytuneConfig) -> str:
    """The report of every arm x seed of cfg, from the files alone; also logged as the wandb report run."""
    root, shown = RunPaths.of(cfg).root, view(cfg)
    table = write(read_scores(root, shown, cfg.judge), shown, root)
    if cfg.publish:
        print(f"[report] published as {publish(root, Path(cfg.publish))}")
    tracking.log_report(cfg, root)
    return table


def report(cfg: WhytuneConfig) -> str:
    """After a sweep: the report over every arm x seed of cfg's model that the jobs scored in the run folder.

    A missing arm x seed of the grid is an error, not something to sample here (this runs at the end of the sweep's
    last job, or where the sweep was submitted, and loads no model).
    """
    found = {(run.arm, run.seed) for run in scored([Path(cfg.out)], cfg.judge) if run.model == cfg.model.name}
    if not found:
        raise FileNotFoundError(f"{cfg.out}: no scored arm x seed of {cfg.model.name} to report")
    arms = [arm for arm in cfg.arms if any(a == arm for a, _ in found)]
    arms += sorted({arm for arm, _ in found} - set(arms))
    seeds = sorted({seed for _, seed in found})
    missing = [f"{arm}/seed{seed}" for arm in arms for seed in seeds if (arm, seed) not in found]
    if missing:
        raise FileNotFoundError(f"{cfg.out}: not scored yet: {', '.join(missing)}; rerun those jobs, then report")
    complete = replace(cfg, arms={arm: cfg.arms.get(arm, ArmConfig(name=arm)) for arm in arms}, seeds=seeds)
    return write_report(complete)


def record_timings(cfg: WhytuneConfig, timings: Timings) -> None:
    """One line per launch in timings.jsonl: a resumed run or the judging half of a GPU run (eval.score=false, then
    true elsewhere) adds its own line instead of overwriting the first launch's seconds with its near-zero ones."""
    append_jsonl(
        RunPaths.of(cfg).root / "timings.jsonl",
        [
            {
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": device_name(),
                # What the transformers model samples (fast, hf) and scores forced choice in: auto differs by machine.
                "dtype": str(pick_dtype(cfg.model, pick_device(cfg.eval.device))).removeprefix("torch."),
                "seconds": {stage: round(seconds, 2) for stage, seconds in timings.items()},
            }
        ],
    )
