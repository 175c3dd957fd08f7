#!/usr/bin/env bash
# llama.cpp for scripts/bench_generate.py's `llama.cpp` variant: its llama-batched-bench (CPU), beside its converters
# convert_hf_to_gguf.py and convert_lora_to_gguf.py with the `conversion` and `gguf-py` folders they import, in
# .llama.cpp/ (git-ignored). Run from anywhere (`make llama-cpp` runs it):
#   bash scripts/llama_cpp_env.sh
#
# No llama.cpp binary can be downloaded here and its repository cannot be cloned, but the PyPI sdist of
# llama-cpp-python vendors llama.cpp's whole source (vendor/llama.cpp): the pinned sdist (its hash checked) is
# downloaded, and only the llama-batched-bench target is built, Release, for this CPU (GGML_NATIVE: -march=native),
# static, without HTTPS or anything else a benchmark does not need. llama-cpp-python 0.3.36 vendors llama.cpp
# 0c1e57098 (its sdist keeps a one-commit .git, so the binary says `version: 0.5.0-dev (build 1, commit 0c1e570)`).
# One patch, scripts/llama_cpp_batched_bench_lora.patch: batched-bench parses --lora but never loads the adapter (it
# builds its context without common_init); the patch loads and activates it, so `+lora` runs cost what they should.
#
# Idempotent: a stamp records the version, the patch, the build's options and the CPU's flags (a native build may not
# run on another CPU); when it matches and the binary runs, nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.llama.cpp}
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PATCH=scripts/llama_cpp_batched_bench_lora.patch
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
SENTENCEPIECE=sentencepiece==0.2.3
JOBS=${JOBS:-2}
STAMP="$DEST/.stamp"
OPTIONS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF)
KEY="llama-cpp-python==$VERSION $(sha256sum "$PATCH" | cut -d' ' -f1) ${OPTIONS[*]}"
KEY="$KEY $(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -d' ' -f1)"

# The converters run on the bench's Python (torch, transformers, numpy; gguf from the gguf-py beside them) and import
# sentencepiece whatever the tokenizer: .venv lacks it (.venv-vllm has it through vLLM).
for venv in .venv .venv-vllm; do
    if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c "import sentencepiece" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet "$SENTENCEPIECE"
    fi
done

report() {
    "$DEST/llama-batched-bench" --version 2>&1 | grep -m1 '^version'
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && report >/dev/null; then
    exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "llama-cpp-python==$VERSION --hash=sha256:$SHA256" >"$WORK/requirements.txt"
"$PY" -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r "$WORK/requirements.txt" -d "$WORK"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
patch --quiet -p1 -d "$SRC" <"$PATCH"
cmake -S "$SRC" -B "$WORK/build" "${OPTIONS[@]}"
cmake --build "$WORK/build" --target llama-batched-bench -j "$JOBS"

rm -rf "$DEST"
mkdir -p "$DEST"
cp "$WORK/build/bin/llama-batched-bench" "$SRC/convert_hf_to_gguf.py" "$SRC/convert_lora_to_gguf.py" "$DEST/"
cp -r "$SRC/conversion" "$SRC/gguf-py" "$DEST/"
report
echo "$KEY" >"$STAMP"
