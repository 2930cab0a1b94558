# Fresh-machine entry points: `make demo`, `make test`, `make lint`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup setup-dev test test-all demo lint clean

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

# torch first: the CPU build of 2.13.0 lies on local disk; a bare torch requirement would
# pull a multi-GB CUDA build. The demo needs the project alone.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The tests and the linters also need the dev tools and Ray (the ray backend's tests).
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $(DEV_STAMP)

# pytest exits 5 when it collects no test: report it, do not pass silently.
test: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

test-all: $(DEV_STAMP)
	$(PY) -m pytest -q

# The built-in default config (MAML-TRPO on 2-D navigation with the paper's protocol) for 40 of
# its 100 meta-iterations (the post-adaptation return has levelled off by then) on both cores,
# the paper's "random" baseline, their adaptation curves on 40 held-out goals and the learning
# curve. Starts afresh in DEMO_DIR.
DEMO_DIR ?= runs/demo
DEMO_SET ?= --set iterations=40 --set learner_threads=2
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/metarl train --out $(DEMO_DIR)/maml $(DEMO_SET)
	$(VENV)/bin/metarl train --out $(DEMO_DIR)/random --set method=random --set iterations=1
	$(VENV)/bin/metarl evaluate $(DEMO_DIR)/maml --compare $(DEMO_DIR)/random
	$(VENV)/bin/metarl plot $(DEMO_DIR)/maml --out $(DEMO_DIR)/learning.png
	@echo "adaptation curves: $(DEMO_DIR)/maml/adaptation.png (table: adaptation.csv)"
	@echo "learning curve:    $(DEMO_DIR)/learning.png"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
