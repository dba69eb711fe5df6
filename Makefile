# The two set-up commands: `make demo` and `make test` each set up what they need on a fresh machine
# (the demo: the package, torch and the examples' extra; the tests: everything, Chromium included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo test bench lab setup dot chromium apertium lint clean

demo: $(DEMO_STAMP)
	$(PY) -m cloudflow_nb.examples.demo

test: setup
	$(PY) -m pytest -q

# JupyterLab on the notebooks (tutorials and pipelines); open the URL it prints
lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check cloudflow_nb tests benchmarks
	$(VENV)/bin/mypy

setup: $(STAMP) dot chromium apertium

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 has a local CPU wheel on these machines; a bare "torch" would pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[examples]"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -e ".[test,examples,dev,browser,notebook]"
	touch $(STAMP)

# $(call apt_need,CHECK,PACKAGE,WITHOUT IT): install a Debian package when CHECK fails and we may
define apt_need
	@$(1) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(2) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "$(2) is missing: run 'sudo apt-get install $(2)' ($(3))"; \
	  fi; }
endef

dot:
	$(call apt_need,command -v dot >/dev/null 2>&1,graphviz,graphs fall back to text until then)

# the browser test (tests/browser) drives Debian's Chromium with Playwright; never `playwright install`
chromium:
	$(call apt_need,test -x /usr/bin/chromium,chromium,tests/browser skips until then)

# the translation example runs Debian's Apertium (GPL) as a separate process; its tests skip without it
apertium:
	$(call apt_need,command -v apertium >/dev/null 2>&1 && apertium -l | grep -qx ' *fr-es' && apertium -l | grep -qx ' *spa-eng',apertium apertium-eng-spa apertium-fr-es,the translation example and its tests need it)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
