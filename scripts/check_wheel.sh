#!/usr/bin/env bash
# The wheel as a user on a cluster gets it: built from this checkout, installed with its dependencies into a fresh
# venv, then the smoke experiment run from an empty folder outside the checkout. CI runs it (.ci/run).
# Run: bash scripts/check_wheel.sh   (2.5 to 4 minutes on 2 cores when pip's cache already holds the dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work" build' EXIT
rm -rf build  # setuptools' staging folder: a stale copy would put deleted modules into the wheel
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
# The CPU build of torch first, as the Makefile installs it, so the range does not pull a CUDA build.
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0 "$work"/dist/whytune-*.whl
mkdir "$work/empty"
cd "$work/empty"  # from here on nothing of the checkout is importable or on the metadata path
tops=$("$work/venv/bin/python" - <<'PY'
from importlib.metadata import files
print(" ".join(sorted({p.parts[0] for p in files("whytune") if not p.parts[0].endswith((".dist-info", ".data")) and p.parts[0] != ".."})))
PY
)
[ "$tops" = "whytune" ] || { echo "check_wheel: top-level entries in the wheel: $tops (want only whytune)"; exit 1; }
WANDB_MODE=disabled OMP_NUM_THREADS=1 "$work/venv/bin/whytune-ablate" experiment=smoke out="$work/run" \
  cache_dir="$work/cache" > "$work/ablate.log" 2>&1 || { tail -40 "$work/ablate.log"; exit 1; }
test -s "$work/run/results.csv" || { echo "check_wheel: no results.csv"; tail -40 "$work/ablate.log"; exit 1; }
echo "check_wheel: wheel installs with whytune as its only top-level package; whytune-ablate wrote results.csv"
