"""Where a launch runs: one name shared by every rank, so that a multi-process launch writes one Hydra run folder."""

from __future__ import annotations

import os
import time
from datetime import datetime


def launch_stamp() -> str:
    """The Hydra run folder's name for this launch, computed alike by every rank.

    `${now:}` is read when each rank starts, which can differ by seconds between ranks. Under Slurm the job id
    names the launch (a requeued job finds its folder again); under `accelerate launch` or `torchrun`
    (LOCAL_RANK set) the start time of the launcher, which is every local rank's parent; else the current time.
    """
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    if "LOCAL_RANK" in os.environ:
        import psutil

        started = psutil.Process(os.getppid()).create_time()
    else:
        started = time.time()
    return datetime.fromtimestamp(started).strftime("%Y-%m-%d_%H-%M-%S")
