# kexport: two commands for a fresh machine.
#   make demo   set up .venv, install the pinned stack, export the digits model everywhere
#   make test   install test needs (Node packages, Debian's chromium) and run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kexport-installed
DEMO_MODEL ?= sample_models/digits_cnn.keras
DEMO_OUT ?= demo-out
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test venv test-deps node-deps chromium samples bench clean

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" 
	$(BIN)/pip install -q -c constraints.txt setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/kexport all $(DEMO_MODEL) -o $(DEMO_OUT)

node-deps:
	@if [ -f runtimes/tfjs_node/package-lock.json ]; then \
	  if command -v npm >/dev/null; then (cd runtimes/tfjs_node && npm ci --no-audit --no-fund --loglevel=error); \
	  else echo "npm not found: TF.js Node parity rows will be skipped"; fi; fi

chromium:
	@command -v chromium >/dev/null || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
	  || echo "could not install chromium: browser parity rows will be skipped"; }

test-deps: venv node-deps chromium

test: test-deps
	$(BIN)/python -m pytest -q -ra

samples: venv
	$(BIN)/python sample_models/build.py

bench: venv
	$(BIN)/python benchmarks/bench_export.py

clean:
	rm -rf $(DEMO_OUT) build dist *.egg-info
