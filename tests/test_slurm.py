"""A real single-node Slurm (slurmctld, slurmd, munge) runs the sbatch files (with stub commands) and a sweep
through Hydra's submitit launcher, whose submitter is killed once the jobs are queued.

The fixture installs Debian's slurm-wlm and munge when they are missing, starts the daemons by hand under a
temporary folder and stops them by their pid files. Accounting is replaced by a stand-in `sacct` that answers
from `squeue`, so a job that dies without a result cannot leave the launcher waiting forever; every wait is
bounded anyway.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from whytune import sweep
from whytune.config import CONFIG_DIR
from whytune.runs import RunPaths, write_json

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("slurmd", "slurmctld", "munged")
# Slots for all four jobs at once (config_overrides lets slurmd declare more CPUs than the machine has): on a
# 2-core machine the jobs then overlap their start-up, and each job's torch uses one thread. Memory too: the node
# declares 1 GB per job (each uses about 0.6 GB), not what the machine has free, which with other work beside the
# tests once left room for one job at a time, so that the four ran one after another.
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
NodeName={host} CPUs={JOBS} RealMemory={JOBS * 1024} State=UNKNOWN
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


def test_the_launchers_setup_is_slurm_job_env_sh():
    """The Hydra launcher's jobs and the sbatch files set up caches, ports and threads by the same lines."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("ablate", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    setup = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["setup"]
    lines = (ROOT / "slurm" / "job_env.sh").read_text().splitlines()
    assert setup == [line for line in lines if line and not line.startswith("#")]
    assert len(setup) == 8
    for sbatch in ("train", "eval"):
        assert "source slurm/job_env.sh" in (ROOT / "slurm" / f"{sbatch}.sbatch").read_text()


@pytest.mark.parametrize(
    ("script", "commands", "threads"),
    [
        ("eval", ["python -m whytune.ablate experiment=smoke"], "2"),
        ("train", ["python -m whytune.data.build experiment=smoke", "accelerate launch"], "1"),  # 2 CPUs over 8 ranks
    ],
)
def test_sbatch_file_sets_up_its_job_on_the_cluster(slurm, tmp_path, script, commands, threads):
    """slurm/<script>.sbatch as submitted, sizes given to sbatch, `python` and `accelerate` stubs that record how
    they were started: the job's caches, ports and threads, under the script's `set -euo pipefail`."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    record = 'echo "$(basename "$0") $* | $OMP_NUM_THREADS | $TRITON_CACHE_DIR | $MASTER_PORT" >> "$STUB_OUT"'
    for name in ("python", "accelerate"):
        (stubs / name).write_text(f"#!/bin/sh\n{record}\n")
        (stubs / name).chmod(0o755)
    env = {**slurm, "PATH": f"{stubs}:{slurm['PATH']}", "STUB_OUT": str(tmp_path / "started")}
    log = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--partition=debug", "--gpus-per-node=0", "--cpus-per-task=2", "--mem=100M"]
        + [f"--output={log}", f"slurm/{script}.sbatch", "experiment=smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout.strip())
    _wait(lambda: not _queued(slurm), 60, f"{script}.sbatch did not finish")
    state = subprocess.run(["sacct", "-j", str(job)], env=slurm, capture_output=True, text=True, timeout=10).stdout
    assert "COMPLETED" in state, state + (log.read_text() if log.exists() else "")
    port = 20000 + job % 1000 * 10
    started = [line.split(" | ") for line in (tmp_path / "started").read_text().splitlines()]
    assert len(started) == len(commands) and all(line[0].startswith(c) for line, c in zip(started, commands)), started
    cache = Path(slurm.get("TMPDIR") or "/tmp") / f"whytune-job-{job}"
    assert all(rest == [threads, str(cache / "triton"), str(port)] for _, *rest in started), started
    if script == "train":
        assert f"--main_process_port {port} -m whytune.train.sft experiment=smoke" in started[-1][0]
    assert not cache.exists()  # removed when the job script exited


def test_of_jobs_finishing_at_once_only_the_last_reports_and_only_once(tmp_path, monkeypatch):
    """Eight job ends at once (threads: each takes the lock through a file handle of its own), a failed job and a
    job that ends twice (requeued after its end): one report, written once every job has completed."""
    reports = []

    def slow_report(config):
        time.sleep(0.2)  # long enough for the other job ends to queue on the lock
        reports.append(json.loads((tmp_path / sweep.MANIFEST).read_text())["finished"])
        return "the table"

    monkeypatch.setattr(sweep, "sweep_report", slow_report)
    callback = sweep.ReportAfterSweep()
    callback.sweep, callback.config = tmp_path, OmegaConf.create({})
    write_json(tmp_path / sweep.MANIFEST, {"jobs": 8, "finished": [], "reported": None})

    def end(num: int, status: JobStatus = JobStatus.COMPLETED) -> None:
        callback.on_job_end(OmegaConf.create({"hydra": {"job": {"num": num}}}), JobReturn(status=status))

    end(7, JobStatus.FAILED)
    end(0)
    assert json.loads((tmp_path / sweep.MANIFEST).read_text())["finished"] == [0]
    threads = [threading.Thread(target=end, args=(num,)) for num in [0, *range(1, 8)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end(3)
    assert reports == [list(range(8))]
    assert (tmp_path / sweep.REPORT).read_text() == "the table\n"
    assert json.loads((tmp_path / sweep.MANIFEST).read_text())["reported"]


def test_sweep_reports_itself_after_its_submitter_is_killed(slurm, tmp_path, cache_dir, tiny_dir):
    """Four jobs (baseline and demos x seeds 0 and 1) share one run folder. The submitting process is killed as soon
    as they are queued; the last job to finish reports all four, and each job had its own caches and ports."""
    out = tmp_path / "run"
    with open(tmp_path / "submitter.log", "w") as log:
        submitter = subprocess.Popen(
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
                "hydra.launcher.cpus_per_task=1",  # one torch thread per job, by the launcher's setup lines
                "hydra.launcher.mem_gb=1",
                "hydra.launcher.timeout_min=5",
            ],
            cwd=ROOT,
            env=slurm,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:  # queued: the jobs' pickles are in place (submitit moves them there once sbatch has answered)
        _wait(
            lambda: (
                len(list(out.glob("hydra/sweep-*/.submitit/*/*_submitted.pkl"))) == 4 or submitter.poll() is not None
            ),
            120,
            "the sweep's four jobs were not queued",
        )
    finally:
        submitter.kill()
        submitter.wait()
    assert submitter.returncode == -signal.SIGKILL, (tmp_path / "submitter.log").read_text()[-3000:]
    _wait(lambda: not _queued(slurm), 360, "the sweep's jobs did not finish")
    logs = sorted(out.glob("hydra/sweep-*/.submitit/*/*_log.out"))
    assert len(logs) == 4, [p.name for p in logs]  # four Slurm jobs, one per arm x seed
    texts = [p.read_text() for p in logs]
    folder = logs[0].parents[2]  # <out>/hydra/sweep-<time>
    assert json.loads((folder / sweep.MANIFEST).read_text())["finished"] == [0, 1, 2, 3], "\n".join(texts)[-6000:]
    assert sum("jobs to finish wrote the report" in text for text in texts) == 1
    assert "results.csv, results.md" in (folder / sweep.REPORT).read_text()
    setups = [re.search(r"caches in (\S+), ports (\d+)-\d+, OMP_NUM_THREADS=1", text) for text in texts]
    assert all(setups) and len({m[1] for m in setups if m}) == len({m[2] for m in setups if m}) == 4
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


def _queued(env: dict[str, str]) -> bool:
    squeue = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=10)
    return squeue.returncode != 0 or bool(squeue.stdout.strip())
