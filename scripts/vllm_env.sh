#!/usr/bin/env bash
# A second environment for the vLLM eval backend (eval.backend=vllm), on a GPU machine.
# vLLM pins its own torch and transformers, which conflict with the training environment (.venv), so it gets
# .venv-vllm: vLLM with this project installed beside it. Run from the repository root:
#   bash scripts/vllm_env.sh
#   .venv-vllm/bin/python -m whytune.eval.run experiment=paper eval.backend=vllm [eval.vllm_args.tensor_parallel_size=2]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# One resolve: vLLM's pins pick torch and transformers inside the project's ranges.
"$VENV/bin/python" -m pip install --quiet -e '.[vllm]'
"$VENV/bin/python" -c "import vllm, torch; print(f'vLLM {vllm.__version__}, torch {torch.__version__}, CUDA {torch.cuda.is_available()}')"
