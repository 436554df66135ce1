# Set-up and everyday commands. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv redis-server espeak-ng chromium test test-cluster k8s-check run smoke demo bench probe lint docs clean images test-containers

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test,bench,dev]'
	@touch $(STAMP)

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

test: venv redis-server espeak-ng chromium docs k8s-check
	$(PY) -m pytest -q

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
