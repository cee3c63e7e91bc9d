# PEMS: `make demo` and `make test` do all set-up on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install                 ## the winter week with every controller → out/demo/report.html
	$(VENV)/bin/pems demo --out out/demo

test: install                 ## every test (services are started by the tests that need them)
	$(PY) -m pytest -q

test-fast: install            ## the fast set, in seconds
	$(PY) -m pytest -q -m "not slow"

bench: install                ## performance benchmarks (pytest-benchmark)
	$(PY) -m pytest bench -q --benchmark-only --benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) out .pytest_cache .benchmarks *.egg-info
