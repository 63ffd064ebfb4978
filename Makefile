# WhatsApp delivery monitor: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA4_VERSION ?= 4.1.1
PYTEST_ARGS ?=
# pytest processes for `make test` (pytest-xdist): the broker tests mostly wait on workers and
# Kafka, so four share two cores well; each process starts its own broker. TEST_WORKERS=0: one.
TEST_WORKERS ?= 4
BENCH_ARGS ?=
# NATIVE=0: install without the native module (native/, Rust): stage 2 then runs the Python
# implementations it mirrors, at about two thirds of the events per CPU second
NATIVE ?= 1
# rustup puts cargo in ~/.cargo/bin, which a non-login shell may not have on its PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE_SOURCES := native/pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)

.DEFAULT_GOAL := help

.PHONY: help install tools run test test-kafka4 lint format bench bench-alerts clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

$(VENV)/.native: $(VENV)/.installed $(NATIVE_SOURCES)
	@command -v cargo >/dev/null || { echo "the native module needs Rust's cargo (https://rustup.rs); NATIVE=0 make install goes without it" >&2; exit 1; }
	$(PY) -m pip install -q --disable-pip-version-check ./native
	@touch $@

install: $(VENV)/.installed $(if $(filter 0,$(NATIVE)),,$(VENV)/.native) ## Create the virtualenv, install the package with dev extras and build the native module

tools: ## Prometheus + promtool and Chromium for the tests (Debian's packages; installed when run as root)
	@{ command -v promtool && command -v chromium; } >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's prometheus (promtool) and chromium for the tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null; \
		else \
			echo "the tests need Prometheus, promtool and Chromium: sudo apt-get install prometheus chromium" >&2; exit 1; \
		fi; }

run: install ## Local Kafka (fetched with Maven) + worker; prints where the metrics are
	$(VENV)/bin/delivery-monitor run

test: install tools ## The whole suite on Kafka 3.9 (default) plus the smoke subset on Kafka 4.x
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-kafka4

test-kafka4: install ## The kafka_smoke subset against the Kafka 4.x broker
	DELIVERY_MONITOR_KAFKA_VERSION=$(KAFKA4_VERSION) $(PY) -m pytest -m kafka_smoke $(PYTEST_ARGS)

lint: install ## ruff (lint + format check), mypy --strict, and cargo fmt --check + clippy for native/
	$(VENV)/bin/ruff check streams testkit tests bench
	$(VENV)/bin/ruff format --check streams testkit tests bench
	$(VENV)/bin/mypy
	$(if $(filter 0,$(NATIVE)),,cargo fmt --manifest-path native/Cargo.toml --check)
	$(if $(filter 0,$(NATIVE)),,cargo clippy --quiet --release --manifest-path native/Cargo.toml -- -D warnings)

format: install ## Apply ruff's formatter and safe fixes
	$(VENV)/bin/ruff format streams testkit tests bench
	$(VENV)/bin/ruff check --fix streams testkit tests bench
	$(if $(filter 0,$(NATIVE)),,cargo fmt --manifest-path native/Cargo.toml)

bench: install ## Benchmark sections on the real broker (python -m bench.run, BENCH_ARGS="..."); bench/results/
	$(PY) -m bench.run $(BENCH_ARGS)

bench-alerts: install ## Alert-quality benchmark: labelled scenarios x feeding modes (python -m bench.alert_quality, BENCH_ARGS="...")
	$(PY) -m bench.alert_quality $(BENCH_ARGS)

clean: ## Remove the virtualenv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info native/target
