# Coop: `make demo` and `make test` each do their own set-up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# PostgreSQL runs of the test suite happen when this is set; locally it is found if it answers.
COOP_TEST_POSTGRES_URL ?= $(shell pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo postgresql+psycopg://postgres@127.0.0.1:5432/test)
export COOP_TEST_POSTGRES_URL

.PHONY: setup services test demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Coop needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# the examples (LoRA fine-tune and eval) need PyTorch; 2.13.0 has a CPU build on the CI machines
	$(BIN)/pip install -q 'torch==2.13.0'
	@touch $(STAMP)

# system services some tests need (Slurm, sshd, Prometheus, Chromium for tests/web): see scripts/services/README.md
services:
	@for s in scripts/services/*.sh; do [ -e "$$s" ] || continue; bash "$$s" up || exit 1; done

test: setup services
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check coop agent tests bench
	$(BIN)/mypy coop agent

demo: setup
	@bash scripts/services/sandbox.sh up  # bubblewrap: the guest sandbox (agent/sandbox.py)
	$(BIN)/coop up --demo

bench: setup
	$(BIN)/python bench/submit_bench.py

clean:
	rm -rf $(VENV) .coop-data .pytest_cache .mypy_cache .ruff_cache
