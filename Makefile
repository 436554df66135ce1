# Set-up and everyday commands. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock redis-server espeak-ng chromium test test-cluster k8s-check run smoke demo bench probe lint docs clean images test-containers

# The virtualenv is installed from uv.lock (exact versions and hashes of every package, for every
# Python and platform), with uv itself pinned by hash in requirements-uv.txt and installed by pip
# into a small bootstrap venv of its own. A changed lock or pin reinstalls. docs/install.md.
UV_HOME ?= .uv
UV := $(UV_HOME)/bin/uv
# uv is told which Python to use (never downloads one) and where the venv is; with Debian's CA
# bundle it trusts the system's certificates (a local CA of a network that inspects TLS too).
UV_RUN = UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON=$(PYTHON) UV_PYTHON_DOWNLOADS=never \
  $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),UV_SYSTEM_CERTS=1) $(UV)

venv: $(STAMP)

$(UV): requirements-uv.txt
	@test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	@$(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements-uv.txt
	@touch $(UV)

$(STAMP): pyproject.toml uv.lock $(UV)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)  # with pip in it, for one's own experiments
	@$(UV_RUN) sync --locked --all-extras --compile-bytecode --quiet
	@touch $(STAMP)

# Every package to the newest release that pyproject allows, uv too (LOCK_ARGS= keeps the locked
# versions and only brings uv.lock in line with an edited pyproject).
LOCK_ARGS ?= --upgrade
lock: $(UV)
	$(UV_RUN) lock $(LOCK_ARGS)
	echo uv | $(UV_RUN) pip compile $(LOCK_ARGS) --universal --generate-hashes --no-header --no-annotate --quiet - -o requirements-uv.txt

# Debian packages a target needs, installed with apt-get when their command is missing.
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
  $$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq

# redis-server (and redis-cli, which builds the test cluster).
redis-server:
	@{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || { \
	  echo "installing redis-server and redis-tools with apt-get"; \
	  $(APT_INSTALL) redis-server redis-tools >/dev/null; }

# espeak-ng: the simulators' caller voice when present. The suite installs it so that it is the
# same everywhere; its tests of the synthetic voice and of espeak-ng's each name their engine.
espeak-ng:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng with apt-get"; \
	  $(APT_INSTALL) espeak-ng >/dev/null; }

# Debian's chromium for the console's page test (Playwright drives it; its own browser download
# cannot run here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt-get"; \
	  $(APT_INSTALL) --no-install-recommends chromium fonts-liberation >/dev/null; }

# The suite on TEST_WORKERS pytest-xdist workers: its end-to-end tests mostly wait on real time
# (a serial run used a third of one core: 643 s), so three share two cores (262 s on 2 cores,
# 2026-12-04; four took 201 s but, on a machine loaded by other jobs, broke more real-time
# bounds: barge-in within 400 ms, a killed stage back within the call). Slow tests go first and
# a few files stay on one worker each (tests/conftest.py); the slowest are listed at the end.
# TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 3
test: venv redis-server espeak-ng chromium docs k8s-check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# deploy/kubernetes/ rendered as kustomize would (no cluster needed) and every object validated
# against the Kubernetes schema offline, with the project's own rules (tools/k8s_check.py).
k8s-check: venv
	$(PY) -m tools.k8s_check

test-cluster: venv redis-server
	$(PY) -m pytest -q tests/test_cluster.py

# The images from Debian's packages where no registry is reachable (containers/images.sh), and the
# stack as one container per service under a Docker engine it starts when none runs (root).
images:
	containers/images.sh

test-containers: venv
	PY=$(PY) containers/test.sh

run: venv redis-server
	$(PY) -m services.launch stack

smoke: venv
	$(PY) -m tools.smoke

demo: venv
	$(PY) -m sim.twilio_call --demo $(DEMO_ARGS)

bench: venv redis-server
	$(PY) -m bench

probe: venv
	$(PY) -m tools.probe

lint: venv
	$(VENV)/bin/ruff check shared services sim tests bench tools
	$(VENV)/bin/ruff format --check shared services sim tests bench tools
	$(VENV)/bin/mypy

# The docs site (mkdocs.yml, docs/) into site/, failing on any warning (a broken link, a page
# left out of the nav); first, whether docs/configuration.md still says what the settings do.
docs: venv
	$(PY) -m tools.settings_doc --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) $(UV_HOME) .pytest_cache .mypy_cache .ruff_cache site
