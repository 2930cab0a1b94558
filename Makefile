# Fresh-machine entry points: `make test`, `make demo`, `make lint`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup test test-all demo lint bench clean

setup: $(STAMP)

# torch first: the CPU build of 2.13.0 lies on local disk; a bare torch requirement would
# pull a multi-GB CUDA build. Ray (optional for users) is installed so its tests run.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,ray]'
	touch $(STAMP)

# pytest exits 5 when it collects no test: report it, do not pass silently.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q

# The main job with the built-in default config: MAML-TRPO on 2D navigation with the paper's
# settings (100 meta-iterations), the paper's "random" baseline, their adaptation curves
# (runs/demo/maml/adaptation.png) and the learning curve (runs/demo/learning.png).
# Starts afresh in DEMO_DIR.
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/metarl train --out $(DEMO_DIR)/maml
	$(VENV)/bin/metarl train --set method=random --set iterations=1 --out $(DEMO_DIR)/random
	$(VENV)/bin/metarl evaluate $(DEMO_DIR)/maml --compare $(DEMO_DIR)/random
	$(VENV)/bin/metarl plot $(DEMO_DIR)/maml --out $(DEMO_DIR)/learning.png

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
