# digitlab — the two commands in the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# System packages the full suite uses: Debian's chromium (browser tests), Fashion-MNIST (a system data dir) and
# PostgreSQL (the multi-machine sweep test starts its own server).
SYSTEM_PACKAGES := chromium dataset-fashion-mnist postgresql

.PHONY: demo test bench mutants system-deps clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev]'
	touch $(VENV)/.base $@

DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
DL := $(VENV)/bin/digitlab

# The main job: import the full MNIST beside the repo when it is there (else digitlab downloads it, or falls back
# to its bundled sample and says so), train the default CNN (recipe `cnn`), and read two example pictures with it.
demo: $(VENV)/.base
	@if [ -d ../shared/data/mnist ]; then $(DL) data fetch mnist --data-dir ../shared/data/mnist; fi
	$(DL) data info mnist
	$(DL) train --out $(DEMO_RUN)
	$(DL) predict $(DEMO_RUN)/model.safetensors docs/examples/seven.jpg docs/examples/three.png
	@echo "Next: $(DL) reproduce   |   $(DL) serve $(DEMO_RUN)/model.safetensors"
	@echo "Open the report: xdg-open $(DEMO_RUN)/report.html   (macOS: open $(DEMO_RUN)/report.html)"

# Installs the Debian packages when they are missing and we may (root, or passwordless sudo).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "make: cannot install$$missing (not root); the tests that need them will be skipped"; exit 0; fi; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "make: could not install$$missing; the tests that need them will be skipped"; \
	fi

test: $(VENV)/.dev system-deps
	$(PY) -m pytest -q --junitxml=$(VENV)/junit.xml
	@$(PY) -c "import sys, xml.etree.ElementTree as E; s=E.parse('$(VENV)/junit.xml').getroot(); s=s if s.tag=='testsuite' else s[0]; ran=int(s.get('tests'))-int(s.get('skipped')); print(f'{ran} tests ran'); sys.exit(0 if ran>0 else 1)"

bench: $(VENV)/.dev
	$(PIP) install -e '.[bench]'
	$(PY) bench/load_mnist.py
	$(PY) bench/vs_torch.py

# Realistic one-line bugs, each applied to a temporary copy of src/ and run against the fast tests that must
# catch it (scripts/mutants.py; --list shows the table). Fails if any survives or a snippet no longer matches.
mutants: $(VENV)/.dev
	$(PY) scripts/mutants.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
