"""The eval stage: prompts -> samples from every arm and seed -> verdicts -> report.

Run on its own (adapters must exist): python -m whytune.eval.run [experiment=...] [out=DIR]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from whytune.config import CONFIG_PATH, EvalBackend, WhytuneConfig, load_arm, validate
from whytune.eval.browse import write_browser
from whytune.eval.forced_choice import load_pairs, paired_test, per_pair_means, score_arm, summarise
from whytune.eval.generate import ArmSwitcher, Sampling, existing, generate_condition, sample_store
from whytune.eval.prompts import EvalPrompt, select_conditions, write_prompts
from whytune.eval.report import CAPABILITY, COERCIVE_WORDS, write_forced_choice, write_report, write_share
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir, pick_device
from whytune.runs import RunPaths, provenance, read_jsonl, stable_hash, write_json
from whytune.stats import comparisons, rates

MATCHED_PAIR = ("demos", "demos_principles")
SAMPLING_KEYS = ("batch_size", "max_new_tokens", "temperature", "top_p", "backend")  # what changes the samples


def runs_of(cfg: WhytuneConfig) -> list[tuple[str, int, str | None]]:
    """(arm, seed, adapter name or None for an untrained arm) for every arm x seed."""
    return [
        (arm, seed, None if load_arm(arm).writer is None else f"{arm}-seed{seed}")
        for arm in cfg.arms
        for seed in cfg.seeds
    ]


def sample_key(cfg: WhytuneConfig, paths: RunPaths, arm: str, seed: int, adapter: str | None) -> str:
    """Settings that change the samples: the model, sampling, and the adapter's own training key."""
    trained = json.loads((paths.adapter(arm, seed) / "stage.json").read_text())["key"] if adapter else None
    sampling = {k: v for k, v in asdict(cfg.eval).items() if k in SAMPLING_KEYS}
    return stable_hash({"model": asdict(cfg.model), "sampling": sampling, "adapter": trained})


def load_arms(cfg: WhytuneConfig) -> tuple[ArmSwitcher, object]:
    """The base model once, with every trained arm's adapter beside it, and the tokenizer."""
    paths = RunPaths.of(cfg)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    tokenizer = load_tokenizer(cfg.model, location)
    adapters = {adapter: paths.adapter(arm, seed) for arm, seed, adapter in runs_of(cfg) if adapter}
    model = load_model(cfg.model, location, pick_device(cfg.eval.device))
    return ArmSwitcher(model, cfg.model.name, fingerprint(location), adapters), tokenizer


def generate_all(cfg: WhytuneConfig, prompts: list[EvalPrompt], arms: Callable[[], tuple]) -> None:
    """Fill every arm x seed x condition up to eval.samples; `arms()` loads the model, only if something is missing."""
    paths = RunPaths.of(cfg)
    runs = runs_of(cfg)
    stores = {
        (arm, seed): sample_store(paths.eval(arm, seed), sample_key(cfg, paths, arm, seed, adapter))
        for arm, seed, adapter in runs
    }
    missing = sum(
        max(0, cfg.eval.samples - existing(stores[arm, seed], p.condition)) for arm, seed, _ in runs for p in prompts
    )
    if missing == 0:
        return
    if cfg.eval.backend is EvalBackend.vllm:  # its own engine: the transformers model is not loaded
        from whytune.eval.vllm_backend import sample_all

        return sample_all(cfg, prompts, runs, stores)
    switcher, tokenizer = arms()
    sampling = Sampling.of(cfg.eval)
    with tqdm(total=missing, desc="eval samples", unit="sample") as progress:
        for arm, seed, adapter in runs:
            for prompt in prompts:
                progress.set_postfix_str(f"{arm} seed{seed} {prompt.condition}")
                generate_condition(
                    switcher, tokenizer, adapter, arm, seed, prompt, sampling, stores[arm, seed], progress
                )


def forced_choice_all(
    cfg: WhytuneConfig, prompts: list[EvalPrompt], arms: Callable[[], tuple]
) -> dict[tuple[str, str], list[float]]:
    """Forced-choice preferences per (arm, condition), each pair averaged over seeds (scores cached per seed)."""
    paths = RunPaths.of(cfg)
    pairs = load_pairs()
    scored: dict[tuple[str, str], list[list[float]]] = {}
    for arm, seed, adapter in runs_of(cfg):
        store = paths.eval(arm, seed) / "forced_choice.json"
        for condition, values in score_arm(arms, adapter, prompts, pairs, store).items():
            scored.setdefault((arm, condition), []).append(values)
    return {key: per_pair_means(seeds) for key, seeds in scored.items()}


def forced_choice_rows(
    means: dict[tuple[str, str], list[float]], baseline: str, pairs: list[tuple[str, str]]
) -> list[dict]:
    """Summary per arm x condition, with paired tests against the baseline and between each given pair."""
    partner = {a: b for pair in pairs for a, b in (pair, pair[::-1])}
    rows = []
    for (arm, condition), values in means.items():
        versus_baseline = means.get((baseline, condition)) if arm != baseline else None
        versus_partner = means.get((partner.get(arm), condition))
        rows.append(
            {
                **asdict(summarise(arm, condition, values)),
                "p_vs_baseline": paired_test(values, versus_baseline) if versus_baseline else None,
                "p_vs_matched": paired_test(values, versus_partner) if versus_partner else None,
            }
        )
    return rows


@dataclass
class Scores:
    """Everything the report needs, read back from the arm x seed folders."""

    records: list[dict]  # one verdict row per sample
    samples: list[dict]
    forced: dict[tuple[str, str], list[float]]  # (arm, condition) -> preference per reply pair
    benign: list[str]  # the capability-guard conditions

    def relabel(self, names: dict[str, str]) -> Scores:
        """The same scores under other arm names (the organism report puts two models side by side)."""

        def rename(row: dict) -> dict:
            return {**row, "arm": names.get(row["arm"], row["arm"])}

        return Scores(
            [rename(r) for r in self.records],
            [rename(r) for r in self.samples],
            {(names.get(a, a), c): v for (a, c), v in self.forced.items()},
            self.benign,
        )

    def __add__(self, other: Scores) -> Scores:
        return Scores(
            self.records + other.records, self.samples + other.samples, {**self.forced, **other.forced}, self.benign
        )


def sample(cfg: WhytuneConfig) -> tuple[list[EvalPrompt], dict[tuple[str, str], list[float]]]:
    """Every sample and forced-choice score of cfg's arms x seeds, not yet judged: all the model work, and nothing
    that needs inspect-evals when eval.prompts_file is given. Returns the prompts and the forced-choice means."""
    paths = RunPaths.of(cfg)
    harms = select_conditions(cfg.eval.conditions)
    benign = select_conditions(cfg.eval.capability_conditions) if cfg.eval.capability_conditions else []
    prompts = write_prompts(harms + [c for c in benign if c not in harms], paths.prompts, cfg.eval.prompts_file)
    for arm, seed, adapter in runs_of(cfg):
        if adapter and not (paths.adapter(arm, seed) / "stage.json").exists():
            raise FileNotFoundError(f"{paths.adapter(arm, seed)}: no trained adapter; run the train stage first")
    arms = functools.cache(lambda: load_arms(cfg))
    generate_all(cfg, prompts, arms)
    harmful = [p for p in prompts if p.condition in harms]  # the benign controls have nothing to resist
    return prompts, forced_choice_all(cfg, harmful, arms) if cfg.eval.forced_choice else {}


def score(cfg: WhytuneConfig) -> Scores:
    """Sample, judge and score every arm x seed of cfg, writing only into their own folders."""
    from whytune.eval.classify import classify_file  # the judges build on inspect-evals; sample() runs without it

    judge = instantiate(cfg.judge)  # before sampling: a missing API key should fail now, not after hours
    prompts, forced = sample(cfg)
    paths = RunPaths.of(cfg)
    chosen = {p.condition for p in prompts}
    records, samples = [], []
    for arm, seed, _ in runs_of(cfg):
        folder = paths.eval(arm, seed)
        verdicts = paths.verdicts(arm, seed, cfg.judge)
        records += [r for r in classify_file(folder / "samples.jsonl", verdicts, judge) if r["condition"] in chosen]
        samples += [r for r in read_jsonl(folder / "samples.jsonl") if r["condition"] in chosen]
    benign = select_conditions(cfg.eval.capability_conditions) if cfg.eval.capability_conditions else []
    return Scores(records, samples, forced, benign)


def report(scores: Scores, out: Path, title: str, baseline: str = "baseline", pairs: list[tuple[str, str]] = ()) -> str:
    """Every report file in `out`: rates and tests, coercive language, forced choice, capability guard, the sample
    browser."""
    from whytune.eval.classifiers import coercive_word  # scoring side only: the classifiers need inspect-evals

    write_browser(
        scores.samples, {r["id"]: r for r in scores.records}, out / "samples.html", title=f"{title}, every sample"
    )
    pooled = rates(scores.records)
    table = write_report(
        pooled,
        rates(scores.records, by_seed=True),
        comparisons(pooled, baseline, list(pairs)),
        out,
        title=title,
        baseline=baseline,
    )
    worded = rates(
        [
            {**r, "harmful": coercive_word(r["response"]) is not None}
            for r in scores.samples
            if r["condition"] not in scores.benign
        ]
    )
    if worded:
        table += "\n\nCoercive language (share of replies saying blackmail or leverage):\n"
        table += write_share(
            COERCIVE_WORDS, worded, out, f"{title}: coercive language", comparisons(worded, baseline, list(pairs))
        )
    if scores.forced:
        table += "\n\nForced choice (log p coercive - log p legitimate, per token; > 0 leans to coercion):\n"
        table += write_forced_choice(
            forced_choice_rows(scores.forced, baseline, list(pairs)), out, f"{title}: forced choice"
        )
    if scores.benign:
        acted = [{**r, "harmful": r["acted"]} for r in scores.records if r["condition"] in scores.benign]
        table += "\n\nCapability guard (share of replies that sent an addressed email):\n"
        table += write_share(CAPABILITY, rates(acted), out, f"{title}: capability guard")
    return table


def evaluate(cfg: WhytuneConfig, report_now: bool = True) -> str:
    """The eval stage, then the report; returns the table printed on stdout.

    report_now=False (one job of a sweep, sharing the run folder with others) writes only into this config's
    arm x seed folders; whytune.pipeline.report writes the report once every job is done.
    """
    scores = score(cfg)
    if not report_now:
        return f"{len(scores.records)} verdicts in {len(runs_of(cfg))} arm x seed folders"
    paths = RunPaths.of(cfg)
    pairs = [MATCHED_PAIR] if all(a in cfg.arms for a in MATCHED_PAIR) else []
    table = report(scores, paths.root, f"whytune: {cfg.name} on {cfg.model.name}", pairs=pairs)
    write_json(paths.root / "provenance.json", provenance(cfg))
    return table


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    print(evaluate(validate(raw)))


if __name__ == "__main__":
    main()
