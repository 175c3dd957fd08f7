"""The eval stage: prompts -> samples from every arm and seed -> verdicts -> report.

Run on its own (adapters must exist): python -m eval.run [experiment=...] [out=DIR]
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from eval.browse import write_browser
from eval.classify import classify_file
from eval.generate import ArmSwitcher, Sampling, existing, generate_condition, sample_store
from eval.prompts import EvalPrompt, select_conditions, write_prompts
from eval.report import write_capability, write_report
from eval.stats import comparisons, rates
from whytune.config import WhytuneConfig, load_arm, validate
from whytune.models import fingerprint, load_model, load_tokenizer, model_dir, pick_device
from whytune.runs import RunPaths, provenance, read_jsonl, stable_hash, write_json

MATCHED_PAIR = ("demos", "demos_principles")


def runs_of(cfg: WhytuneConfig) -> list[tuple[str, int, str | None]]:
    """(arm, seed, adapter name or None for an untrained arm) for every arm x seed."""
    return [(arm, seed, None if load_arm(arm).writer is None else f"{arm}-seed{seed}")
            for arm in cfg.arms for seed in cfg.seeds]


def sample_key(cfg: WhytuneConfig, paths: RunPaths, arm: str, seed: int, adapter: str | None) -> str:
    """Settings that change the samples: the model, sampling, and the adapter's own training key."""
    trained = json.loads((paths.adapter(arm, seed) / "stage.json").read_text())["key"] if adapter else None
    sampling = {k: v for k, v in asdict(cfg.eval).items() if k not in ("samples", "conditions", "device")}
    return stable_hash({"model": asdict(cfg.model), "sampling": sampling, "adapter": trained})


def generate_all(cfg: WhytuneConfig, prompts: list[EvalPrompt]) -> None:
    """Fill every arm x seed x condition up to eval.samples; load the model only if something is missing."""
    paths = RunPaths.of(cfg)
    runs = runs_of(cfg)
    for arm, seed, adapter in runs:
        if adapter and not (paths.adapter(arm, seed) / "stage.json").exists():
            raise FileNotFoundError(f"{paths.adapter(arm, seed)}: no trained adapter; run the train stage first")
    stores = {(arm, seed): sample_store(paths.eval(arm, seed), sample_key(cfg, paths, arm, seed, adapter))
              for arm, seed, adapter in runs}
    missing = sum(max(0, cfg.eval.samples - existing(stores[arm, seed], p.condition))
                  for arm, seed, _ in runs for p in prompts)
    if missing == 0:
        return
    device = pick_device(cfg.eval.device)
    location = model_dir(cfg.model, Path(cfg.cache_dir))
    tokenizer = load_tokenizer(cfg.model, location)
    adapters = {adapter: paths.adapter(arm, seed) for arm, seed, adapter in runs if adapter}
    switcher = ArmSwitcher(load_model(cfg.model, location, device), cfg.model.name, fingerprint(location), adapters)
    sampling = Sampling(cfg.eval.samples, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.eval.temperature,
                        cfg.eval.top_p)
    with tqdm(total=missing, desc="eval samples", unit="sample") as progress:
        for arm, seed, adapter in runs:
            for prompt in prompts:
                progress.set_postfix_str(f"{arm} seed{seed} {prompt.condition}")
                generate_condition(switcher, tokenizer, adapter, arm, seed, prompt, sampling, stores[arm, seed],
                                   progress)


def evaluate(cfg: WhytuneConfig) -> str:
    """Run the whole eval stage and write the report; returns the table printed on stdout."""
    paths = RunPaths.of(cfg)
    harms = select_conditions(cfg.eval.conditions)
    benign = select_conditions(cfg.eval.capability_conditions) if cfg.eval.capability_conditions else []
    prompts = write_prompts(harms + [c for c in benign if c not in harms], paths.prompts)
    judge = instantiate(cfg.judge)  # before sampling: a missing API key should fail now, not after hours
    generate_all(cfg, prompts)
    chosen = {p.condition for p in prompts}
    records, samples = [], []
    for arm, seed, _ in runs_of(cfg):
        folder = paths.eval(arm, seed)
        verdicts = folder / f"verdicts-{stable_hash(cfg.judge)[:8]}.jsonl"  # one file per judge: rejudging keeps both
        records += [r for r in classify_file(folder / "samples.jsonl", verdicts, judge) if r["condition"] in chosen]
        samples += [r for r in read_jsonl(folder / "samples.jsonl") if r["condition"] in chosen]
    write_browser(samples, {r["id"]: r for r in records}, paths.root / "samples.html",
                  title=f"whytune: {cfg.name} on {cfg.model.name}, every sample")
    pooled = rates(records)
    pairs = [MATCHED_PAIR] if all(a in cfg.arms for a in MATCHED_PAIR) else []
    table = write_report(pooled, rates(records, by_seed=True), comparisons(pooled, "baseline", pairs), paths.root,
                         title=f"whytune: {cfg.name} on {cfg.model.name}")
    if benign:
        acted = [{**r, "harmful": r["acted"]} for r in records if r["condition"] in benign]
        table += "\n\nCapability guard (share of replies that sent an addressed email):\n"
        table += write_capability(rates(acted), paths.root)
    write_json(paths.root / "provenance.json", provenance(cfg))
    return table


@hydra.main(config_path="../configs", config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    print(evaluate(validate(raw)))


if __name__ == "__main__":
    main()
