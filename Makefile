# The two commands a newcomer runs on a fresh machine:
#   make run   - set up .venv and run the retrain flow (every stage, gate, promotion) on the demo data
#   make test  - set up .venv and run the whole test suite
# and, while changing code: make test-fast - the unit tests only (docs/testing.md)
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_EXTRA_LOGGERS ?= tuneline
# tuneline's log lines reach the Prefect UI inside a flow run; outside one (a stage run alone) they stay local.
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore

.PHONY: setup run test test-fast lint bench serve demo-ab deploy clean-outputs cluster cluster-down

setup:
	@bash scripts/setup.sh

# The demo trains on both cores (tests keep one thread each: OMP_NUM_THREADS above).
RUN_THREADS ?= 2
run: setup
	@OMP_NUM_THREADS=$(RUN_THREADS) bash scripts/run_demo.sh

test: setup
	$(BIN)/python -m ruff check src tests bench flows tasks deploy scripts
	$(BIN)/python -m pytest

# The unit tests only: no whole-pipeline / server / training-end-to-end tests (`integration`), no team
# cluster, no GPU; stops at the first failure. The tests CI must run are `make test`'s; docs/testing.md.
test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not cluster and not gpu" -x -q

lint: setup
	$(BIN)/python -m ruff check src tests bench flows tasks deploy scripts

# The registry's champion (and challenger, as a canary) behind an OpenAI-compatible API on
# http://127.0.0.1:8000/v1 (after `make run`); docs/serving.md.
serve: setup
	$(BIN)/tuneline serve

# After `make run`: a challenger, both served, simulated users' traffic and feedback, the A/B report and
# decision, feedback exported as raw data for the next run.
demo-ab: setup
	$(BIN)/python scripts/ab_demo.py

# The Prefect deployments (nightly + on-demand retrain, hourly feedback loop), served by this process
# (needs a Prefect server: `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api make deploy).
deploy: setup
	$(BIN)/python deploy/deployments.py

# The team cluster on this host (docs/scale-out.md): PostgreSQL, SeaweedFS S3, MLflow and Prefect servers, the
# `tuneline` work pool and two workers in their own clones, state in .cluster/. Credentials: TUNELINE_PG_PASSWORD,
# TUNELINE_S3_ACCESS_KEY, TUNELINE_S3_SECRET_KEY, else generated into .cluster/credentials.env (0600).
CLUSTER_STATE ?= .cluster
CLUSTER_WORKERS ?= 2
cluster: setup
	$(BIN)/python deploy/cluster.py up --state $(CLUSTER_STATE) --workers $(CLUSTER_WORKERS)

cluster-down:
	$(BIN)/python deploy/cluster.py down --state $(CLUSTER_STATE)

# Quick benchmarks (~5 min); bench/RESULTS.md lists the full commands (100k brute force takes ~25 min).
bench: setup
	$(BIN)/python bench/dedup.py --sizes 10000 --langs en zh
	$(BIN)/python bench/data_pipeline.py --mb 50

clean-outputs:
	rm -rf data/interim data/processed data/rejected reports out
