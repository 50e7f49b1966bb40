# cluster_spark — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
JARS := .jars
DELTA_VERSION := 4.4.0
DELTA_ARTIFACTS := io.delta:delta-spark_4.2_2.13:$(DELTA_VERSION) io.delta:delta-storage:$(DELTA_VERSION)
MVN_DEP := org.apache.maven.plugins:maven-dependency-plugin:3.6.1

.PHONY: help setup jars test demo bench incremental-check coverage lint fmt clean

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

#: Debian's Chromium, for the report's headless-browser test (installed as root).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

setup: $(VENV)/.installed $(JARS)/.fetched ## venv with pinned deps + Delta jars from Maven Central

jars: $(JARS)/.fetched ## fetch the Delta Lake jars only

test: setup $(CHROMIUM) ## run the test suite (local-mode Spark + Delta; Chromium for the report)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=25

demo: setup ## generate a synthetic cluster experiment and analyse it into out/demo/
	$(VENV)/bin/cluster-spark demo --out out/demo

#: bench/run.py rewrites BENCHMARKS.md, so the other sections are spliced in after it.
bench: setup ## benchmarks (writes BENCHMARKS.md)
	$(PY) bench/run.py
	$(PY) bench/refresh.py
	$(PY) bench/coverage.py --write
	$(PY) bench/few_clusters.py --write

incremental-check: setup ## incremental refresh = full recompute on every date of a 28-day experiment
	$(PY) bench/incremental.py --days 28

coverage: $(VENV)/.installed ## CI coverage simulations, pure Python, no Spark (their sections of BENCHMARKS.md)
	$(PY) bench/coverage.py --write
	$(PY) bench/few_clusters.py --write

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: setup ## format
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove generated data (keeps venv and jars)
	rm -rf out spark-warehouse metastore_db derby.log

# --- production paths (spark-submit, Airflow) ---
AIRFLOW_VENV := .venv-airflow
AIRFLOW_LOCK := requirements-airflow.lock
DIST_ZIP := dist/cluster_spark.zip
SUBMIT_ARGS ?= --master 'local[*]' -- run --config conf/demo.yaml --date 2026-02-01 --root out/demo

.PHONY: dist wheel submit airflow-venv airflow-check test-prod

$(DIST_ZIP): $(shell find src/cluster_spark -type f ! -path '*__pycache__*' 2>/dev/null) scripts/build_zip.py
	$(PY) scripts/build_zip.py $@

wheel: ## the wheel for pip/cluster installs (dist/cluster_spark-<version>-py3-none-any.whl)
	$(PY) -m pip wheel -q --no-deps -w dist .

dist: $(DIST_ZIP) wheel ## dist/cluster_spark.zip (spark-submit --py-files) and the wheel

submit: setup dist ## spark-submit jobs/analyze.py: make submit SUBMIT_ARGS='--master spark://h:7077 -- run ...'
	scripts/submit.sh $(SUBMIT_ARGS)

$(AIRFLOW_VENV)/.installed: $(AIRFLOW_LOCK)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -r $(AIRFLOW_LOCK)
	touch $@

airflow-venv: $(AIRFLOW_VENV)/.installed ## Airflow 3 in its own venv (.venv-airflow) from requirements-airflow.lock

airflow-check: airflow-venv ## import dags/ in a DagBag (no import errors), in a throwaway AIRFLOW_HOME
	$(AIRFLOW_VENV)/bin/python scripts/airflow_dag_check.py

test-prod: setup airflow-venv ## the slow spark-submit (standalone cluster) and Airflow tests only
	$(PY) -m pytest -q tests/test_submit_cluster.py tests/test_airflow.py
