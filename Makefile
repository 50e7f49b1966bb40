# cluster_spark — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
JARS := .jars
DELTA_VERSION := 4.4.0
DELTA_ARTIFACTS := io.delta:delta-spark_4.2_2.13:$(DELTA_VERSION) io.delta:delta-storage:$(DELTA_VERSION)
MVN_DEP := org.apache.maven.plugins:maven-dependency-plugin:3.6.1

.PHONY: help setup jars test demo bench lint fmt clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(JARS)/.fetched:
	mkdir -p $(JARS)
	for a in $(DELTA_ARTIFACTS); do \
	  mvn -q -B $(MVN_DEP):copy -Dartifact=$$a -DoutputDirectory=$(JARS) || exit 1; \
	done
	touch $@

setup: $(VENV)/.installed $(JARS)/.fetched ## venv with pinned deps + Delta jars from Maven Central

jars: $(JARS)/.fetched ## fetch the Delta Lake jars only

test: setup ## run the test suite (local-mode Spark + Delta)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: setup ## generate a synthetic cluster experiment and analyse it into out/demo/
	$(VENV)/bin/cluster-spark demo --out out/demo

bench: setup ## benchmarks (writes BENCHMARKS.md)
	$(PY) bench/run.py

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: setup ## format
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove generated data (keeps venv and jars)
	rm -rf out spark-warehouse metastore_db derby.log
