# fm9g-deploy: `make demo` rehearses a rollout on the local sandbox; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLI := $(BIN)/fm9g-deploy
PYTEST := $(BIN)/pytest
# The integration tests drive ansible-playbook and testinfra from the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help deps engine demo demo-down test test-unit test-integration clean

help:
	@echo "make demo              rehearse the whole rollout on the local sandbox and chat with it"
	@echo "make test              unit and sandbox integration tests"
	@echo "make test-unit         the fast tier (no Docker)"
	@echo "make test-integration  the sandbox tier (Docker)"
	@echo "make demo-down         remove the demo sandbox"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[plot,test]'
	touch $@

deps: $(VENV)/.installed engine

engine:
	bash scripts/ensure-engine.sh

demo: deps
	bash scripts/demo.sh

demo-down: $(VENV)/.installed
	$(CLI) sandbox down

test-unit: $(VENV)/.installed
	$(PYTEST) tests/unit -q

test-integration: deps
	$(PYTEST) tests/integration -q

test: deps
	$(PYTEST) tests -q --durations=25

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
