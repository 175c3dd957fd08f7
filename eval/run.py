"""The eval stage: prompts -> samples from every arm and seed -> forced-choice scores -> verdicts.

Its one way in is `evaluate`; it writes only into the arm x seed folders (and the run's prompts file), so the jobs
of a sweep can share a run folder. The report reads what it wrote (whytune.eval.results).
Run on its own (adapters must exist): python -m whytune.eval.run [experiment=...] [out=DIR]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from whytune.config import CONFIG_PATH, EvalBackend, WhytuneConfig, validate
from whytune.eval.backends import Backends, fill
from whytune.eval.classifiers import Judge
from whytune.eval.classify import classify_file
from whytune.eval.forced_choice import load_pairs, score_arm
from whytune.eval.generate import existing, sample_store
from whytune.eval.prompts import EvalPrompt, select_conditions, write_prompts
from whytune.eval.sampling import runs_of
from whytune.eval.served import served_names
from whytune.models import model_key
from whytune.runs import RunPaths, judge_record, stable_hash, write_json

log = logging.getLogger(__name__)
SAMPLING_KEYS = ("batch_size", "max_new_tokens", "temperature", "top_p", "backend")  # what changes the samples


def sample_key(cfg: WhytuneConfig, paths: RunPaths, arm: str, seed: int, adapter: str | None) -> str:
    """Settings that change the samples: the model, sampling, and the adapter's own training key (and, from a server,
    the model name it is served under)."""
    trained = json.loads((paths.adapter(arm, seed) / "stage.json").read_text())["key"] if adapter else None
    sampling = {k: v for k, v in asdict(cfg.eval).items() if k in SAMPLING_KEYS}
    settings = {"model": model_key(cfg.model), "sampling": sampling, "adapter": trained}
    if cfg.eval.backend is EvalBackend.served:
        settings["served"] = served_names(cfg, [(arm, seed, adapter)])[arm, seed]
    return stable_hash(settings)


def generate_all(cfg: WhytuneConfig, prompts: list[EvalPrompt], backends: Backends) -> None:
    """Fill every arm x seed x condition up to eval.samples; the backend starts only if something is missing."""
    paths = RunPaths.of(cfg)
    runs = runs_of(cfg)
    stores = {
        (arm, seed): sample_store(paths.eval(arm, seed), sample_key(cfg, paths, arm, seed, adapter))
        for arm, seed, adapter in runs
    }
    todo = sum(max(0, cfg.eval.samples - existing(store, p.condition)) for store in stores.values() for p in prompts)
    if todo:
        with tqdm(total=todo, desc=f"eval samples ({cfg.eval.backend.value})", unit="sample") as progress:
            fill(backends, runs, prompts, stores, cfg.eval.samples, progress)


def forced_choice_all(cfg: WhytuneConfig, prompts: list[EvalPrompt], backends: Backends) -> None:
    """Every arm x seed's forced-choice preferences, into its folder's forced_choice.json (kept across reruns)."""
    paths = RunPaths.of(cfg)
    pairs = load_pairs()
    scorer = backends if cfg.eval.backend is EvalBackend.served else (lambda: backends.local)
    for arm, seed, adapter in runs_of(cfg):
        if score_arm(scorer, adapter, prompts, pairs, paths.eval(arm, seed) / "forced_choice.json") is None:
            log.warning(
                "forced choice skipped: the server at %s gives no prompt log-probabilities", cfg.eval.served.base_url
            )
            return


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
    backends = Backends(cfg, runs_of(cfg))
    generate_all(cfg, prompts, backends)
    if cfg.eval.forced_choice:  # on the harm conditions only: the benign controls have nothing to resist
        forced_choice_all(cfg, [p for p in prompts if p.condition in harms], backends)
    return prompts


@dataclass(frozen=True)
class BuiltJudge:
    """A judge of the run and the settings that name its verdicts file (`verdicts-<hash of settings>.jsonl`)."""

    settings: dict
    judge: Judge


def judges(cfg: WhytuneConfig) -> list[BuiltJudge]:
    """The run's judges, `judge` and then `second_judge` when set, or none with eval.score=false. Built at start-up:
    an API key variable that is not set stops the run before any work, naming the override that avoids it."""
    if not cfg.eval.score:
        return []
    chosen = {"judge": cfg.judge} | ({"second_judge": cfg.second_judge} if cfg.second_judge else {})
    for key, settings in chosen.items():
        _check_key(key, settings)
    return [BuiltJudge(settings, instantiate(settings)) for settings in chosen.values()]


def _check_key(key: str, node: object) -> None:
    """Stop, saying what to do, when `node` (a judge's settings, at `key`) names a key variable that is not set."""
    if not isinstance(node, dict):
        return
    variable = node.get("api_key_env")
    if variable and not os.environ.get(variable):
        if key.startswith("second_judge"):
            instead = "another second judge (judge@second_judge=heuristic, offline) or none (second_judge=null)"
        else:
            instead = (
                "another judge: judge=openai judge.client.base_url=URL judge.client.model=NAME for any "
                "OpenAI-compatible endpoint, or offline rules: judge=heuristic second_judge=null"
            )
        raise ValueError(
            f"{key}.api_key_env names {variable}, which is not set: export {variable}, or choose {instead}"
        )
    for name, value in node.items():
        _check_key(f"{key}.{name}", value)


def judge_all(cfg: WhytuneConfig, built: BuiltJudge) -> int:
    """Judge every sample of cfg's arms x seeds not judged yet by one judge, into its own verdicts file; returns the
    count of verdicts."""
    paths = RunPaths.of(cfg)
    count = 0
    for arm, seed, _ in runs_of(cfg):
        verdicts = paths.verdicts(arm, seed, built.settings)
        write_json(judge_record(verdicts), built.settings)
        count += len(classify_file(paths.eval(arm, seed) / "samples.jsonl", verdicts, built.judge))
    return count


def evaluate(cfg: WhytuneConfig, built: list[BuiltJudge] | None = None) -> str:
    """The eval stage: sample, score forced choice, and (with eval.score) judge with every judge (`built`, else built
    here before sampling, so a missing key fails first); returns a line to print."""
    built = judges(cfg) if built is None else built
    prompts = sample(cfg)
    done = f"{len(prompts)} conditions sampled for {len(cfg.arms)} arms x {len(cfg.seeds)} seeds on {cfg.model.name}"
    if not built:
        return done + ", not judged (eval.score=false)"
    return done + "; " + ", ".join(f"{judge_all(cfg, each)} verdicts" for each in built)


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    print(evaluate(validate(raw)))


if __name__ == "__main__":
    main()
