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

test: setup lint debian-tools
	$(BIN)/zoo validate
	$(BIN)/zoo fixtures
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Debian tools the tests drive (browser test, promtool, compose validation): installed once here, outside
# the tests' time limits; without root or apt the tests that need them say so and skip.
DEBIAN_TOOLS := chromium:chromium promtool:prometheus docker-compose:docker-compose
debian-tools:
	@missing=""; for p in $(DEBIAN_TOOLS); do command -v $${p%%:*} >/dev/null || missing="$$missing $${p##*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "apt-get install$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	  || echo "apt-get install$$missing failed: the tests that need them will try again"; \
	else echo "not installing$$missing (needs root and apt-get)"; fi

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
