"""Compare runs: one table and one plot over every model x arm x seed scored in the given run folders.

    whytune-compare 'runs=[runs/smoke]'
    whytune-compare 'runs=[runs/demo,runs/paper]' out=runs/compare

Works the same on a run folder filled locally and on one filled by the jobs of a Slurm sweep.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from whytune.config import CONFIG_PATH
from whytune.eval.aggregate import compare


@hydra.main(config_path=CONFIG_PATH, config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    pairs = [(a, b) for a, b in cfg.comparisons]
    print(compare([Path(r) for r in cfg.runs], judge, out, cfg.baseline, pairs))
    print(f"\nIn {out}/: comparison.csv, comparison_by_seed.csv, comparison.png")


if __name__ == "__main__":
    main()
