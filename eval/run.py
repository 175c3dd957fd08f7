"""The eval stage: prompts -> samples from every arm and seed -> forced-choice scores -> verdicts.

Its one way in is `evaluate`; it writes only into the arm x seed folders (and the run's prompts file), so the jobs
of a sweep can share a run folder. The report reads what it wrote (whytune.eval.results).
Run on its own (adapters must exist): python -m whytune.eval.run [experiment=...] [out=DIR]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from whytune.config import CONFIG_PATH, EvalBackend, WhytuneConfig, validate
from whytune.eval.classifiers import Judge
from whytune.eval.classify import classify_file
from whytune.eval.forced_choice import load_pairs, score_arm
from whytune.eval.generate import ArmSwitcher, Sampling, existing, generate_condition, sample_store
from whytune.eval.prompts import EvalPrompt, select_conditions, write_prompts
from whytune.eval.vllm_backend import sample_all
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir, model_key, pick_device
from whytune.runs import RunPaths, judge_record, stable_hash, write_json

SAMPLING_KEYS = ("batch_size", "max_new_tokens", "temperature", "top_p", "backend")  # what changes the samples


def runs_of(cfg: WhytuneConfig) -> list[tuple[str, int, str | None]]:
    """(arm, seed, adapter name or None for an untrained arm) for every arm x seed."""
    return [
        (arm, seed, None if spec.writer is None else f"{arm}-seed{seed}")
        for arm, spec in cfg.arms.items()
        for seed in cfg.seeds
    ]


def sample_key(cfg: WhytuneConfig, paths: RunPaths, arm: str, seed: int, adapter: str | None) -> str:
    """Settings that change the samples: the model, sampling, and the adapter's own training key."""
    trained = json.loads((paths.adapter(arm, seed) / "stage.json").read_text())["key"] if adapter else None
    sampling = {k: v for k, v in asdict(cfg.eval).items() if k in SAMPLING_KEYS}
    return stable_hash({"model": model_key(cfg.model), "sampling": sampling, "adapter": trained})


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


def forced_choice_all(cfg: WhytuneConfig, prompts: list[EvalPrompt], arms: Callable[[], tuple]) -> None:
    """Every arm x seed's forced-choice preferences, into its folder's forced_choice.json (kept across reruns)."""
    paths = RunPaths.of(cfg)
    pairs = load_pairs()
    for arm, seed, adapter in runs_of(cfg):
        score_arm(arms, adapter, prompts, pairs, paths.eval(arm, seed) / "forced_choice.json")


def harm_and_benign_conditions(cfg: WhytuneConfig) -> tuple[list[str], list[str]]:
    """The harm conditions, and the benign controls (capability guard) that are not among them."""
    harms = select_conditions(cfg.eval.conditions)
    benign = select_conditions(cfg.eval.capability_conditions) if cfg.eval.capability_conditions else []
    return harms, [c for c in benign if c not in harms]


def sample(cfg: WhytuneConfig) -> list[EvalPrompt]:
    """Every sample and forced-choice score of cfg's arms x seeds: all the model work, and nothing that needs
    inspect-evals when eval.prompts_file is given. Returns the prompts."""
    paths = RunPaths.of(cfg)
    harms, benign = harm_and_benign_conditions(cfg)
    prompts = write_prompts(harms + benign, paths.prompts, cfg.eval.prompts_file)
    for arm, seed, adapter in runs_of(cfg):
        if adapter and not (paths.adapter(arm, seed) / "stage.json").exists():
            raise FileNotFoundError(f"{paths.adapter(arm, seed)}: no trained adapter; run the train stage first")
    arms = functools.cache(lambda: load_arms(cfg))
    generate_all(cfg, prompts, arms)
    if cfg.eval.forced_choice:  # on the harm conditions only: the benign controls have nothing to resist
        forced_choice_all(cfg, [p for p in prompts if p.condition in harms], arms)
    return prompts


def judge_all(cfg: WhytuneConfig, judge: Judge) -> int:
    """Judge every sample of cfg's arms x seeds not judged yet, into one verdicts file per judge; returns the count
    of verdicts."""
    paths = RunPaths.of(cfg)
    count = 0
    for arm, seed, _ in runs_of(cfg):
        verdicts = paths.verdicts(arm, seed, cfg.judge)
        write_json(judge_record(verdicts), cfg.judge)
        count += len(classify_file(paths.eval(arm, seed) / "samples.jsonl", verdicts, judge))
    return count


def evaluate(cfg: WhytuneConfig) -> str:
    """The eval stage: sample, score forced choice, and (with eval.score) judge; returns a line to print."""
    judge = instantiate(cfg.judge) if cfg.eval.score else None  # before sampling: a missing key fails now
    prompts = sample(cfg)
    done = f"{len(prompts)} conditions sampled for {len(cfg.arms)} arms x {len(cfg.seeds)} seeds on {cfg.model.name}"
    if judge is None:
        return done + ", not judged (eval.score=false)"
    return done + f"; {judge_all(cfg, judge)} verdicts"


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    print(evaluate(validate(raw)))


if __name__ == "__main__":
    main()
