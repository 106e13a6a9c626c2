# kexport: two commands for a fresh machine.
#   make demo   set up .venv, install the pinned stack and what every runtime needs, export the digits model everywhere
#   make test   the same installs, then the whole suite (plus the parity matrix under both oneDNN settings)
#   make test-fast   the edit-run loop: no keras.applications, no browser, two small models (< 3 min)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kexport-installed
DEMO_MODEL ?= sample_models/digits_cnn.keras
DEMO_OUT ?= demo-out
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test test-fast test-onednn venv runtime-deps test-deps node-deps chromium samples bench clean
APT := flock /tmp/kexport-apt.lock env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

venv: $(STAMP)

# PYTHONWARNINGS: setuptools' notes on the license table and editable installs are not the user's business
$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" 
	$(BIN)/pip install -q -c constraints.txt setuptools wheel
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: venv runtime-deps
	$(BIN)/kexport all $(DEMO_MODEL) -o $(DEMO_OUT)

node-deps:
	@if [ -f runtimes/tfjs_node/package-lock.json ]; then \
	  if [ runtimes/tfjs_node/node_modules/.package-lock.json -nt runtimes/tfjs_node/package-lock.json ]; then :; \
	  elif command -v npm >/dev/null; then (cd runtimes/tfjs_node && npm ci --no-audit --no-fund --no-update-notifier --loglevel=error); \
	  else echo "npm not found: TF.js Node parity rows will be skipped"; fi; fi

chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "chromium missing: run 'sudo apt-get install chromium' for the browser rows"; exit 0; }; \
	  ($(APT) update -qq && $(APT) install -y -qq chromium) >/dev/null \
	  || echo "could not install chromium: browser parity rows will be skipped"; }

# arm64 Debian bookworm root for litert-arm64 / the Pi server test (qemu-user; built once, cached
# in ~/.cache/kexport/arm64-root or $KEXPORT_ARM64_ROOT; ~1-2 min when missing, 0.1 s when present)
.PHONY: arm64-root
arm64-root: venv
	@bash runtimes/arm64/build_root.sh || echo "could not build the arm64 root: litert-arm64 rows will be skipped"

# JVM runner for dl4j / onnxruntime-java (runtimes/jvm: DL4J, ND4J linux-x86_64, ONNX Runtime from Maven
# Central, 245 MB into ~/.m2 once; skipped in 0.02 s when up to date)
.PHONY: jvm-runner
jvm-runner:
	@bash runtimes/jvm/build.sh

# nginx (Debian) as the load balancer of tests/test_rolling_restart.py and benchmarks/bench_rolling.py
.PHONY: nginx
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] || { echo "nginx missing: run 'sudo apt-get install nginx-light' for the rolling-restart test"; exit 0; }; \
	  ($(APT) update -qq && { $(APT) install -y -qq nginx-light || $(APT) install -y -qq nginx; }) >/dev/null \
	  || echo "could not install nginx: the rolling-restart test will be skipped"; }

# Java 17+ for Spark (runtime spark-local; pyspark itself comes with kexport[spark])
.PHONY: java
java:
	@command -v java >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "java missing: run 'sudo apt-get install openjdk-17-jre-headless' for the spark-local rows"; exit 0; }; \
	  ($(APT) update -qq && $(APT) install -y -qq openjdk-17-jre-headless) >/dev/null \
	  || echo "could not install Java: spark-local rows will be skipped"; }

# Everything the runtimes need besides Python packages (each runtime adds its prerequisite here).
runtime-deps: node-deps chromium arm64-root jvm-runner nginx java

test-deps: venv runtime-deps

test: test-deps
	$(BIN)/python -m pytest -q -ra
	$(MAKE) --no-print-directory test-onednn

# TensorFlow's oneDNN rewrites (on by default on AVX-512/VNNI CPUs) change the graphs the TF.js,
# TFLite and ONNX converters see: the artifacts must not depend on the converting CPU.
test-onednn: test-deps
	for v in 0 1; do echo "== TF_ENABLE_ONEDNN_OPTS=$$v"; \
	  TF_ENABLE_ONEDNN_OPTS=$$v KEXPORT_TEST_TARGETS=tfjs,tflite,onnx $(BIN)/python -m pytest -q -ra -p no:cacheprovider \
	    tests/test_parity_matrix.py || exit 1; done

test-fast: venv node-deps
	KEXPORT_FAST=1 $(BIN)/python -m pytest -q -ra -x

samples: venv
	$(BIN)/python sample_models/build.py

bench: venv
	$(BIN)/python benchmarks/bench_export.py

clean:
	rm -rf $(DEMO_OUT) build dist *.egg-info
