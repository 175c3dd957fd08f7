"""A real single-node Slurm (slurmctld, slurmd, munge) runs a sweep through Hydra's submitit launcher.

The fixture installs Debian's slurm-wlm and munge when they are missing, starts the daemons by hand under a
temporary folder and stops them by their pid files. Accounting is replaced by a stand-in `sacct` that answers
from `squeue`, so a job that dies without a result cannot leave the launcher waiting forever; every wait is
bounded anyway.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from whytune.runs import RunPaths

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("slurmd", "slurmctld", "munged")
# Slots for all four jobs at once (config_overrides lets slurmd declare more CPUs than the machine has): on a
# 2-core machine the jobs then overlap their start-up, and each job's torch uses one thread.
JOBS = 4
SACCT = """#!/bin/sh
# Stand-in for sacct without an accounting daemon: the state of each job asked for (-j ID), from squeue.
ids=""
while [ $# -gt 0 ]; do
  if [ "$1" = "-j" ]; then ids="$ids${ids:+,}$2"; shift; fi
  shift
done
echo "JobID|State|NodeList"
squeue -h -r -t all ${ids:+-j "$ids"} -o '%i|%T|%N'
"""


def _install() -> None:
    """Debian's packages, once per machine; skip (not fail) only where apt itself is unavailable."""
    if shutil.which("slurmctld", path=os.environ["PATH"] + ":/usr/sbin") and shutil.which("munged", path="/usr/sbin"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("Slurm is not installed and apt-get (as root) is unavailable to install slurm-wlm and munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]
    if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(install, env=env, check=True, capture_output=True, timeout=300)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(folder: Path, socket_path: Path) -> str:
    """Ports of its own, so a cluster left behind by a killed run cannot block this one."""
    host = socket.gethostname().split(".")[0]
    free_mb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    return f"""ClusterName=whytune-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={socket_path}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SlurmdParameters=config_overrides
MailProg=/bin/true
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} CPUs={JOBS} RealMemory={max(1024, free_mb - 2048)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {seconds:.0f} s")
        time.sleep(0.5)


def _stop(folder: Path) -> None:
    """SIGTERM each daemon named by its pid file, then wait (bounded) until it has gone."""
    pids = [int(pid_file.read_text()) for pid_file in (folder / f"{name}.pid" for name in DAEMONS) if pid_file.exists()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _wait(lambda: not any(_alive(pid) for pid in pids), 30, "the Slurm daemons did not stop")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm():
    """Environment for commands that talk to a freshly started one-node cluster (partition `debug`)."""
    _install()
    # Not under pytest's private tmp folders: munged needs every folder above its socket open to all (mode 755).
    folder = Path(tempfile.mkdtemp(prefix="whytune-slurm-"))
    folder.chmod(0o755)
    for sub in ("state", "spool", "munge", "bin"):
        (folder / sub).mkdir(mode=0o755)
    socket_path = folder / "munge" / "munge.socket"
    key = folder / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30)
    (folder / "slurm.conf").write_text(_slurm_conf(folder, socket_path))
    (folder / "bin" / "sacct").write_text(SACCT)
    (folder / "bin" / "sacct").chmod(0o755)
    env = {
        **os.environ,
        "SLURM_CONF": str(folder / "slurm.conf"),
        "PATH": f"{folder / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}:/usr/sbin",
    }
    try:
        subprocess.run(
            [
                "munged",
                f"--key-file={key}",
                f"--socket={socket_path}",
                f"--pid-file={folder}/munged.pid",
                f"--log-file={folder}/munged.log",
                f"--seed-file={folder}/munge.seed",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], env=env, check=True, capture_output=True, timeout=30)
        _wait(
            lambda: (
                "idle"
                in subprocess.run(
                    ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10
                ).stdout
            ),
            60,
            "the node is not idle",
        )
        yield env
    finally:
        _stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_sweep_over_arms_and_seeds_runs_as_slurm_jobs_and_is_reported_together(slurm, tmp_path, cache_dir, tiny_dir):
    """Four jobs (baseline and demos x seeds 0 and 1) share one run folder; the report aggregates all four."""
    out = tmp_path / "run"
    sweep = subprocess.run(
        [
            sys.executable,
            "-m",
            "whytune.ablate",
            "-m",
            "hydra/launcher=slurm",
            "experiment=smoke",
            f"out={out}",
            f"cache_dir={cache_dir}",
            "arms=[baseline],[demos]",
            "seeds=[0],[1]",
            "eval.samples=2",
            "eval.batch_size=2",
            "eval.forced_choice=false",
            "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=5",
            "hydra.launcher.setup=['export OMP_NUM_THREADS=1']",
        ],
        cwd=ROOT,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    logs = list(out.glob("hydra/sweep-*/.submitit/*/*_log.out"))
    assert len(logs) == 4  # four Slurm jobs, one per arm x seed
    paths = RunPaths(out, "tiny-random")
    assert sorted(p.name for p in (out / "tiny-random" / "demos").iterdir()) == ["seed0", "seed1"]
    assert all((paths.adapter("demos", seed) / "manifest.json").exists() for seed in (0, 1))
    with open(out / "results_by_seed.csv") as handle:
        runs = {(row["arm"], row["seed"]) for row in csv.DictReader(handle)}
    assert runs == {("baseline", "0"), ("baseline", "1"), ("demos", "0"), ("demos", "1")}
    with open(out / "results.csv") as handle:
        pooled = {row["arm"]: row for row in csv.DictReader(handle)}
    assert set(pooled) == {"baseline", "demos"}
    assert all(row["seeds"] == "2" and int(row["n"]) + int(row["unscored"]) == 4 for row in pooled.values())
    assert pooled["demos"]["p_vs_baseline"]  # each arm tested against the baseline that another job sampled
    with open(out / "comparison_by_seed.csv") as handle:  # written as whytune-compare writes it for local runs
        assert len(list(csv.DictReader(handle))) == 4
