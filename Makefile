# quantflow: `make help` lists the targets. `make run` and `make test` are all a fresh clone needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# No internet to send telemetry to; a venv's scripts first on PATH so dvc.yaml's `quantflow stage` resolves.
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install run test test-infra test-sim test-long test-faults test-fast lint ui repro metrics plots clean bench-compress bench-serve bench-serve-log simulate-feedback scale bench-scale \
	simulate-nights bench-data quality bench-labels

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/quantflow: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (torch 2.13.0 CPU wheel is for CPython 3.11)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/quantflow ## create .venv and install the project (pinned versions)

run: install ## run the nightly flow once on the built-in dataset (embedded MLflow, local Prefect, local DVC remote)
	$(BIN)/quantflow run

test: install ## run the test suite (real MLflow server, Prefect test harness, git + DVC in temp dirs)
	$(BIN)/pytest

test-infra: install ## the tests marked infra: PostgreSQL-backed MLflow, a Prefect server (CI runs them too)
	$(BIN)/pytest -m infra

test-sim: install ## the tests marked sim: quantflow simulate-nights with served traffic, as a user runs it (~1 min)
	$(BIN)/pytest -m sim

test-long: install ## the tests marked long: quantflow reproduce rebuilds a version, quantflow scale on Dask (~2.5 min)
	$(BIN)/pytest -m long

test-faults: install ## the fault suite: real `quantflow run` killed at every phase, outages, two runs at once (~8 min)
	$(BIN)/pytest -m faults tests/faults

test-fast: install ## the tests not marked slow
	$(BIN)/pytest -m "not slow"

lint: install ## ruff check + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

ui: install ## open the MLflow UI on the embedded store at http://127.0.0.1:5000
	$(BIN)/quantflow ui

repro: install ## reproduce the pipeline with DVC (a no-op right after `make run`)
	$(BIN)/dvc repro

metrics: install ## show the DVC metrics
	$(BIN)/dvc metrics show

plots: install ## render the DVC plots to dvc_plots/index.html
	$(BIN)/dvc plots show

bench-compress: install ## measure every compression variant on the full test split; writes BENCHMARKS.md
	$(BIN)/dvc repro train  # a no-op when the model is up to date; retrains after a model code change
	$(BIN)/python bench/compress.py --rounds 3

bench-serve: install ## quantflow serve vs mlflow models serve (registered + type-hinted pyfunc) and the serving goals; writes BENCHMARKS.md (needs wrk and `make run`)
	@command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/serve.py --seconds 5 --rounds 2

bench-serve-log: install ## the prediction log's cost: quantflow serve with serve.log_sample 1.0 vs 0, alternating at concurrency 16; writes BENCHMARKS.md (needs wrk and `make run`)
	@command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/serve.py --log-overhead --seconds 5 --rounds 6

simulate-feedback: install ## five nights with served traffic between them (night 3's from another corpus), in simulation/
	$(BIN)/quantflow simulate-nights --nights 5 --traffic 300 --shift-night 3

simulate-nights: install ## three nights of held-back built-in data, night 2 bad, in the sandbox simulation/
	$(BIN)/quantflow simulate-nights --nights 3

bench-data: install ## batch-contract, validate and drift throughput on the full built-in corpus (BENCHMARKS.md)
	$(BIN)/python bench/data.py --rounds 3

bench-labels: install ## label-noise audit vs 5 % known flips, and report vs drop accuracy, on both built-in datasets (BENCHMARKS.md)
	$(BIN)/python bench/labels.py

clean: ## remove outputs of runs (keeps .venv, the MLflow store, the DVC cache and the studies' committed tables)
	rm -rf data/raw data/split data/features artifacts dvc_plots $(filter-out reports/quality.md reports/scale,$(wildcard reports/*))

scale: install ## scaling study: every size of params.yaml `scale:` on a local Dask cluster, MLflow runs + plots
	$(BIN)/quantflow scale

bench-scale: install ## the scaling study with 1 vs 2 Dask workers (+ DDP 1 vs 2 processes); writes BENCHMARKS.md
	$(BIN)/python bench/scale.py --set ingest.max_rows_per_class=3000 --set train.epochs=3 --ddp

quality: install ## every candidate model vs the TF-IDF baseline on both built-in datasets; writes reports/quality.md
	$(BIN)/python bench/quality.py
