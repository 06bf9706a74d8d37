# Two commands do everything on a fresh machine: `make up` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision: the builds that lie on this machine's disk (CPU or CUDA wheels alike).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup up test lint fixtures validate bench-policy mutation clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PINS)
	# llama-cpp-python compiles llama.cpp from its source package: on every core
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[models,dev]'
	touch $(STAMP)

fixtures: setup
	$(BIN)/zoo fixtures

validate: setup
	$(BIN)/zoo validate

up: setup
	$(BIN)/zoo up

test: setup lint
	$(BIN)/zoo validate
	$(BIN)/zoo fixtures
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check serving tests benchmarks
	$(BIN)/lint-imports

bench-policy: setup
	$(BIN)/python benchmarks/run_policy_bench.py

# Mutation testing of the manager (serving/vram), not part of `make test`: score per module, surviving
# mutants, mutation-report.json. Config: [tool.mutmut] in pyproject.toml; equivalents: mutation-equivalents.toml.
mutation: setup
	$(BIN)/python tools/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis mutants mutation-report.json
