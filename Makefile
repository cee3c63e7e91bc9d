# PEMS: `make demo` and `make test` do all set-up on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export MPLBACKEND ?= Agg

PEERS  ?= .venv-peers

.PHONY: install services demo test test-fast bench bench-peers validate fault-matrix docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install                 ## the winter week with every controller → out/demo/report.html
	$(VENV)/bin/pems demo --out out/demo

services:                     ## Debian packages of the test servers (the tests start them on 127.0.0.1)
	@tools/install_services.sh

# Two workers (the machine's two cores), a test file per worker: module fixtures are built once, and
# the service tests, which mostly wait on their servers and accelerated clocks, overlap the solver-heavy ones.
TEST_WORKERS ?= 2

test: install services        ## every test; service-backed tests start their own servers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install            ## the fast set, in seconds
	$(PY) -m pytest -q -m "not slow and not service"

bench: install services       ## performance benchmarks (pytest-benchmark)
	$(PY) -m pytest bench -q --benchmark-only --benchmark-columns=min,median,max,rounds

$(PEERS)/.installed-stamp:     # EMHASS pins numpy<2.3, cvxpy<1.8: its own environment
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet "emhass==0.18.7"
	@touch $@

bench-peers: install $(PEERS)/.installed-stamp   ## EMHASS beside our controllers → out/bench-peers
	$(VENV)/bin/pems bench winter-week --controllers rule-based,emhass,emhass-battery,mpc,oracle --out out/bench-peers

validate: install             ## calibrate on the real buildings in ../shared/data → out/validate
	$(PY) tools/validate.py --out out/validate

fault-matrix: install services  ## every fault a home throws at the live loop, through real services → out/fault-matrix
	$(PY) tools/fault_matrix.py --out out/fault-matrix

docs: install                 ## the generated parts of docs/reference and README.md, from the code
	$(PY) -m pems.docs

clean:
	rm -rf $(VENV) $(PEERS) out .pytest_cache .benchmarks *.egg-info
