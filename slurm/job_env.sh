# What the jobs of one sweep, or jobs that share a node, must not share. Sourced by slurm/*.sbatch; the Hydra
# launcher's jobs run the same lines as its `setup` (configs/hydra/launcher/slurm.yaml; tests/test_slurm.py keeps
# the two alike). The Hugging Face model cache stays shared (read-mostly). Each job writes its compile and kernel
# caches in a folder of its own on the node's local disk (removed when the job script exits), and takes ten ports
# from its job id (ports repeat every 1000 job ids): MASTER_PORT for torch.distributed and accelerate, VLLM_PORT
# for vLLM's engine (it counts up from there), WHYTUNE_SERVED_PORT for a server the job starts itself. Torch
# threads: the CPUs Slurm gave the task (--cpus-per-task), else the job's CPUs on the node. Written without `${...}`,
# which the launcher's config cannot hold.
export WHYTUNE_JOB_CACHE=$(printenv TMPDIR || echo /tmp)/whytune-job-$SLURM_JOB_ID
export TRITON_CACHE_DIR=$WHYTUNE_JOB_CACHE/triton TORCHINDUCTOR_CACHE_DIR=$WHYTUNE_JOB_CACHE/inductor VLLM_CACHE_ROOT=$WHYTUNE_JOB_CACHE/vllm
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 1000 * 10))
export VLLM_PORT=$((MASTER_PORT + 1)) WHYTUNE_SERVED_PORT=$((MASTER_PORT + 9))
export OMP_NUM_THREADS=$(printenv SLURM_CPUS_PER_TASK || printenv SLURM_CPUS_ON_NODE || echo 1)
if printenv SLURM_CPUS_PER_TASK > /dev/null; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
trap 'rm -rf "$WHYTUNE_JOB_CACHE"' EXIT
echo "[job $SLURM_JOB_ID] caches in $WHYTUNE_JOB_CACHE, ports $MASTER_PORT-$((MASTER_PORT + 9)), OMP_NUM_THREADS=$OMP_NUM_THREADS"
