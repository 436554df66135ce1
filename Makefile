# Set-up and everyday commands. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv redis-server chromium test test-cluster run smoke demo bench probe lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test,bench,dev]'
	@touch $(STAMP)

# redis-server (and redis-cli, which builds the test cluster) from Debian's packages when missing.
redis-server:
	@{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || { \
	  echo "installing redis-server and redis-tools with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null; }

# Debian's chromium for the console's page test (Playwright drives it; its own browser download
# cannot run here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

test: venv redis-server chromium
	$(PY) -m pytest -q

test-cluster: venv redis-server
	$(PY) -m pytest -q tests/test_cluster.py

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
