# The two README commands: `make demo` (run the demo manifest) and `make test` (run the tests).
# Both create .venv and install what they need from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GENOFLOW_HOME ?= $(CURDIR)/.genoflow
export GENOFLOW_HOME

.PHONY: demo test serve web test-clients dev bench bench-serve lint format clean cluster-demo cluster-tools stress-races node-tools
.PHONY: drs-compliance

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/genoflow run data/manifests/demo.tsv

test: $(VENV)/.installed-dev web test-clients
	$(BIN)/python -m pytest

# JavaScript from npm, pinned by each folder's package-lock.json (nothing minified is committed):
# igv.js for the /view page (served from genoflow/serve/web/node_modules), and the clients the
# serve tests run (@gmod/bam, @gmod/tabix, playwright-core driving Debian's chromium).
WEB := genoflow/serve/web
CLIENTS := genoflow_tests/js

# Node.js and npm from apt when they are missing (as cluster-tools does for Redis and PostgreSQL).
node-tools:
	@if ! command -v npm >/dev/null; then \
	  echo "installing nodejs and npm with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends nodejs npm >/dev/null; \
	fi

$(WEB)/node_modules/.installed: $(WEB)/package.json $(WEB)/package-lock.json | node-tools
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $@

$(CLIENTS)/node_modules/.installed: $(CLIENTS)/package.json $(CLIENTS)/package-lock.json | node-tools
	cd $(CLIENTS) && npm ci --no-audit --no-fund
	touch $@

web: $(WEB)/node_modules/.installed

test-clients: $(CLIENTS)/node_modules/.installed

# A local cluster (README "Running on a cluster"): Redis, PostgreSQL, a fake GCS bucket, the
# Dagster daemon and UI, two Celery workers; the demo manifest; a report; everything stopped.
cluster-demo: $(VENV)/.installed-dev cluster-tools
	$(BIN)/python -m scripts.cluster

cluster-tools:
	@if ! command -v redis-server >/dev/null || ! { command -v initdb >/dev/null || \
	    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then \
	  echo "installing redis-server and postgresql with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends redis-server postgresql >/dev/null; \
	fi

# GA4GH's drs-compliance-suite (DRS 1.2.0) against `genoflow serve` over the demo home, without and
# with bearer tokens; reports in build/drs-compliance/; fails when a case fails. The suite pins
# old Flask/requests/pytest, so it gets a virtualenv of its own; Werkzeug < 2.3 and jsonschema
# are what its Flask 2.2 and its schema checks need and its wheel does not pin or declare.
DRS_VENV := .venv-drs
$(DRS_VENV)/.installed:
	test -x $(DRS_VENV)/bin/python || $(PYTHON) -m venv $(DRS_VENV)
	$(DRS_VENV)/bin/python -m pip install -q drs-compliance-suite==1.0.3 'werkzeug>=2.2,<2.3' \
	    jsonschema==4.17.3
	touch $@

drs-compliance: $(VENV)/.installed $(DRS_VENV)/.installed
	$(BIN)/python scripts/drs_compliance.py --suite-python $(DRS_VENV)/bin/python \
	    --out build/drs-compliance

# Two nodes chained by DRS (README): node A builds the demo manifest into
# $(GENOFLOW_HOME) as `make demo` does and serves it; data/c2m2/file.tsv, its rows' persistent_id
# set to A's drs://127.0.0.1:PORT/{md5} (access_url emptied), is run by node B into a fresh home
# under build/drs-demo/; B's files are compared with A's; the server is stopped. Fails when a row
# failed or a file differs.
.PHONY: drs-demo
drs-demo: $(VENV)/.installed
	$(BIN)/python scripts/drs_demo.py

# The race-prone tests 50 times each under a parallel fsync-heavy writer; a table of failures.
stress-races: $(VENV)/.installed-dev
	$(BIN)/python scripts/stress_races.py

# The demo manifest registered (nothing built), then served on http://127.0.0.1:8080/: a GET
# for a file not built yet starts its build.
serve: $(VENV)/.installed web
	$(BIN)/genoflow register data/manifests/demo.tsv
	$(BIN)/genoflow serve

dev: $(VENV)/.installed
	$(BIN)/genoflow dev

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py

# wrk and nginx from apt when they are missing (as cluster-tools does for Redis and PostgreSQL).
# Arguments for benchmarks/serve.py in SERVE_ARGS, e.g. SERVE_ARGS="--only ranges --baseline HEAD~1".
bench-serve: $(VENV)/.installed-dev
	@if ! command -v wrk >/dev/null || ! { command -v nginx >/dev/null || \
	    test -x /usr/sbin/nginx; }; then \
	  echo "installing wrk and nginx with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends wrk nginx >/dev/null; \
	fi
	$(BIN)/python benchmarks/serve.py $(SERVE_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-drs .genoflow $(WEB)/node_modules $(CLIENTS)/node_modules
