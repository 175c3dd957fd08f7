"""The model-organism experiment: make a model that blackmails, then ask which arm removes the behaviour.

1. Tune the original model on coercive transcripts (arm `organism`, other scenarios than the arms see) and merge
   that adapter into a new base model folder.
2. Run every arm on top of the organism, the baseline included, and the untuned original model beside them.
3. One report: `original`, `organism` (the untuned organism, the baseline of every test), `organism+<arm>`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from whytune.config import ModelSource, WhytuneConfig
from whytune.data.build import build
from whytune.eval.run import MATCHED_PAIR, report, score
from whytune.models import load_tokenizer, model_dir
from whytune.runs import RunPaths, locked, provenance, write_json
from whytune.train.merge import merge_adapter
from whytune.train.sft import train_arm

ORGANISM = "organism"


def organism_stage(cfg: WhytuneConfig) -> WhytuneConfig:
    """Build, train and merge the organism; returns cfg with the organism as its model."""
    o = cfg.organism
    stage = replace(
        cfg,
        arms=[ORGANISM],
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
    organism_model = replace(
        cfg.model, name=f"{cfg.model.name}-{ORGANISM}", source=ModelSource.pretrained, path=str(merged)
    )
    return replace(cfg, model=organism_model)


def names(cfg: WhytuneConfig) -> dict[str, str]:
    return {arm: ORGANISM if arm == "baseline" else f"{ORGANISM}+{arm}" for arm in cfg.arms}


def run_organism(cfg: WhytuneConfig, train_arms) -> str:
    """The whole organism experiment; `train_arms(cfg)` builds and trains cfg's arms (the pipeline's stages)."""
    on_organism = organism_stage(cfg)
    train_arms(on_organism)
    original = replace(cfg, arms=["baseline"])
    scores = score(original).relabel({"baseline": "original"}) + score(on_organism).relabel(names(cfg))
    relabelled = names(cfg)
    pairs = [(relabelled[a], relabelled[b]) for a, b in [MATCHED_PAIR] if a in relabelled and b in relabelled]
    root = RunPaths.of(cfg).root
    table = report(
        scores, root, f"whytune: {cfg.name}, {cfg.model.name} and its organism", baseline=ORGANISM, pairs=pairs
    )
    write_json(root / "provenance.json", provenance(cfg))
    return table
