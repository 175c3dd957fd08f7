"""The main command: the whole ablation for the chosen experiment, ending in the comparison table.

    whytune-ablate                                # experiment=demo: 3 arms, embedded model, CPU
    whytune-ablate experiment=smoke out=/tmp/s    # tiny random model, under a minute
    whytune-ablate arms=[baseline,demos] model=qwen2.5-7b-instruct experiment=paper
    whytune-ablate -m hydra/launcher=slurm experiment=paper 'arms=[baseline],[demos]' 'seeds=[0],[1]'

Results land in the run folder (`out`, default runs/<experiment>): results.csv, results.md, rates.png. In a
sweep (-m) each job runs its slice of arms x seeds into that folder, and the report follows the last job.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from whytune.config import CONFIG_PATH, validate
from whytune.runner import run


@hydra.main(config_path=CONFIG_PATH, config_name="ablate", version_base="1.3")
def main(raw: DictConfig) -> None:
    cfg = validate(raw)
    if HydraConfig.get().mode is RunMode.MULTIRUN:
        print(run(cfg, report=False))
        return
    table = run(cfg)
    print(f"\n{table}")
    if cfg.eval.score:
        print(f"\nResults in {cfg.out}/: results.csv, results.md, rates.png")


if __name__ == "__main__":
    main()
