# Two entry points for a fresh machine: `make demo` (set up + run the whole conversion on the demo data)
# and `make test` (set up + run the test suite). Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo
# torch goes in first, pinned: the CPU build lies on disk here; an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine use e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"`.
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED = 1
# The ephemeral Prefect API migrates its SQLite database on first start; 20 s (the default) is short on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: setup demo test lint test-fast integration repro clean-demo lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml infra/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c infra/constraints.txt -e '.[dev]'
	$(BIN)/llm2slm fetch-assets
	touch $@

# llama.cpp's GGUF converters (Python scripts only, from llama-cpp-python's sdist, sha256-pinned): the GGUF export
# runs and is tested with them. The default SLM engine (onnxruntime-genai) is a wheel in pyproject's dependencies;
# the compiled llama.cpp engine stays the optional extra llm2slm[llama-cpp] (docs/serving.md).
LLAMA_CPP_SRC := $(VENV)/llama.cpp-src
export LLM2SLM_LLAMA_CPP_DIR ?= $(abspath $(LLAMA_CPP_SRC))

$(LLAMA_CPP_SRC)/convert_hf_to_gguf.py: infra/llama-cpp-src.txt | $(BIN)/python
	rm -rf $(VENV)/sdist && $(BIN)/pip download --quiet --no-deps --no-binary :all: --require-hashes \
	  -r infra/llama-cpp-src.txt -d $(VENV)/sdist
	mkdir -p $(LLAMA_CPP_SRC) && tar -xzf $(VENV)/sdist/llama_cpp_python-*.tar.gz -C $(LLAMA_CPP_SRC) \
	  --strip-components=3 --wildcards '*/vendor/llama.cpp/convert_*.py' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/conversion/*'
	rm -rf $(VENV)/sdist
	touch $@

setup: $(VENV)/.installed $(LLAMA_CPP_SRC)/convert_hf_to_gguf.py

demo: setup
	$(BIN)/llm2slm demo-data --workdir $(WORKDIR)
	$(BIN)/llm2slm run --workdir $(WORKDIR)

# Lint, format check, the duplicate-code scan and the docs build (a broken link fails it) first, then the suite.
test: setup lint
	$(BIN)/python -m pytest -q -ra -m "not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pylint components tasks flows  # duplicate code only: [tool.pylint] in pyproject.toml (~2.5 min on 2 cores)
	$(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

# Everything but the end-to-end run with the real SmolLM2.
test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not e2e and not integration"

# The scaled topology started natively (infra/README.md): needs Debian's postgresql package (.ci/run installs it).
integration: setup
	$(BIN)/python -m pytest -q -ra tests/integration

repro: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

clean-demo:
	rm -rf $(WORKDIR)

# Re-pin infra/constraints.txt from the current venv (torch left out: it is installed first, CPU or CUDA build).
lock: setup
	{ sed -n '1,4p' infra/constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; } > infra/constraints.txt.new
	mv infra/constraints.txt.new infra/constraints.txt
