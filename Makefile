# Two commands do all set-up on a fresh machine with only Python and pip:
#   make test   - create .venv, install, start Redis/PostgreSQL/S3/Celery workers, run the suite
#   make test-faults - the long fault tests (kill -9, S3 outage), each printing its figures
#   make test-hosts - several hosts in Linux network namespaces (root): per-host queues, a lost
#                 host, a host cut off from its broker and Redis, a shared volume, on Redis and
#                 on RabbitMQ as the broker; each test prints its figures
#   make test-browser - the upload widget and tus-js-client in Chromium (Playwright)
#   make test-rabbitmq - the integration and fault tests with RabbitMQ as the broker
#                 (Debian's rabbitmq-server, started by the test run) instead of Redis
#   make demo   - create .venv, install the demo's needs only, run the example project
#                 (ARGS=--smoke: once, no browser)
#   make bench  - the transfer benchmarks (ARGS=--quick for small sizes)
#   make docs   - the documentation site (docs/, mkdocs.yml) into site/, warnings as errors
#   make tox    - the version matrix (tox.ini) in a tox venv of its own (TOXARGS="-e minimum")
# PYTHON=python3.13 (any interpreter on PATH, or a path): its own venv, .venv-python3.13,
# so that several Pythons' environments live side by side; the default python3 uses .venv.
PYTHON ?= python3
ifeq ($(PYTHON),python3)
VENV ?= .venv
else
VENV ?= .venv-$(notdir $(PYTHON))
endif
BIN := $(VENV)/bin
# The venv itself (shared); the suite's packages (test, lint, bench extras: Playwright, the
# embedded PostgreSQL, ...) in STAMP; the demo's (the app, moto's server, requests, Pillow) in
# DEMO_STAMP, so that `make demo` on a fresh clone installs only what the demo runs. Either order
# works on one venv: each stamp installs its own extras with `pip install -e`.
VENV_STAMP := $(VENV)/.venv-stamp
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
ARGS ?=
STRICT ?=

.PHONY: venv test test-faults test-hosts test-browser test-rabbitmq demo bench docs lint format tox clean

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $(VENV_STAMP)

$(STAMP): $(VENV_STAMP) setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[redis,test,lint,bench]"
	touch $(STAMP)

$(DEMO_STAMP): $(VENV_STAMP) setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[redis,demo]"
	touch $(DEMO_STAMP)

venv: $(STAMP)

test: $(STAMP)
	QUEUED_STORAGE_TEST_STRICT=$(STRICT) PYTHONDEVMODE=1 $(BIN)/python -m pytest $(ARGS)

# The long fault tests (marker "faults", deselected by make test); each prints its figures.
test-faults: $(STAMP)
	QUEUED_STORAGE_TEST_STRICT=$(STRICT) PYTHONDEVMODE=1 $(BIN)/python -m pytest -m faults $(ARGS)

# Several hosts on this machine (marker "hosts", deselected by make test): network and mount
# namespaces, so root (tests/harness/hosts.py); a lab with Redis as the broker, then one with
# RabbitMQ (Debian's rabbitmq-server; ARGS="-k rabbitmq" runs one); each test prints its figures.
test-hosts: $(STAMP)
	QUEUED_STORAGE_TEST_STRICT=$(STRICT) PYTHONDEVMODE=1 $(BIN)/python -m pytest -m hosts $(ARGS)

# The browser tests (marker "browser", deselected by make test): Chromium from Debian's package.
test-browser: $(STAMP)
	QUEUED_STORAGE_TEST_STRICT=$(STRICT) PYTHONDEVMODE=1 $(BIN)/python -m pytest -m browser $(ARGS)

# The integration and fault tests with RabbitMQ as Celery's broker (QS_TEST_BROKER=rabbitmq: a
# node of the run's own from Debian's rabbitmq-server, through the broker's fault proxy; the
# cache and the result backend stay on Redis), and the tests marked "rabbitmq" (a node with a
# 3 s consumer_timeout: a worker survives the channel RabbitMQ closes). The suite's node has
# RabbitMQ's default consumer_timeout (30 min); QS_TEST_RABBITMQ_CONSUMER_TIMEOUT=20 (seconds)
# shortens it. Not test_harness.py: it tests the harness's own Redis servers and proxies.
test-rabbitmq: $(STAMP)
	QS_TEST_BROKER=rabbitmq QUEUED_STORAGE_TEST_STRICT=$(STRICT) PYTHONDEVMODE=1 \
		$(BIN)/python -m pytest -m "(integration or faults or rabbitmq) and not browser and not hosts" \
		--ignore=tests/test_harness.py $(ARGS)

demo: $(DEMO_STAMP)
	$(BIN)/python example_project/demo.py $(ARGS)

# make bench ARGS=--quick: every row on small sizes (about three minutes)
# The scale batch (bench_scale.py) fills the ledger to 1M rows (--quick: 100k; SCALE_ARGS=--full:
# 10M as well) and measures the recurring costs against the same mix at 1k rows.
# bench_direct.py: a 1 GiB direct upload to S3 against tus and the raw PUT (--quick: 128 MiB).
# bench_processors.py: a ClamAV scan (a clamd of the run's own) and a content-type check before
# the transfer, per GiB (1 GiB, --quick: 128 MiB) and per 64 KiB file, against no processors.
SCALE_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)
	$(BIN)/python benchmarks/bench.py --rows 4 --s3-latency 10 --json benchmarks/results-latency.json $(ARGS)
	$(BIN)/python benchmarks/bench_uploads.py $(ARGS)
	$(BIN)/python benchmarks/bench_direct.py $(ARGS)
	$(BIN)/python benchmarks/bench_scale.py $(ARGS) $(SCALE_ARGS)
	$(BIN)/python benchmarks/bench_broker.py $(ARGS)
	$(BIN)/python benchmarks/bench_processors.py $(ARGS)

# The docs site: MkDocs in strict mode (a broken link or anchor fails); the docs extra installs
# it once per venv. NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2.0 (not a
# warning of this build).
DOCS_STAMP := $(VENV)/.docs-stamp

$(DOCS_STAMP): $(STAMP) setup.cfg
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy queued_storage

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The version matrix: tox (with tox-uv) in a venv of its own; TOXARGS="-e minimum" picks envs.
TOX_VENV ?= .venv-tox
TOXARGS ?=

$(TOX_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(TOX_VENV)
	$(TOX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOX_VENV)/bin/python -m pip install --quiet "tox>=4.14" "tox-uv>=1.11"
	touch $@

tox: $(TOX_VENV)/.installed-stamp
	$(TOX_VENV)/bin/tox $(TOXARGS)

clean:
	rm -rf $(VENV) $(TOX_VENV) .tox .demo site build dist *.egg-info .mypy_cache .ruff_cache
