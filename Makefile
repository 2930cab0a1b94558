# Fresh-machine entry points: `make test`, `make demo`, `make lint`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup test test-all demo lint bench clean

setup: $(STAMP)

# torch first: the CPU build of 2.13.0 lies on local disk; a bare torch requirement would
# pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# pytest exits 5 when it collects no test: report it, do not pass silently.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q

# The main job with the built-in default config (sinusoid MAML, 70k iterations as the paper),
# its pretrained baseline, and the adaptation curves of both. Starts afresh in DEMO_DIR.
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/metarl train --out $(DEMO_DIR)/maml
	$(VENV)/bin/metarl train experiments/configs/sinusoid_pretrained.yaml --out $(DEMO_DIR)/pretrained
	$(VENV)/bin/metarl evaluate $(DEMO_DIR)/maml --compare $(DEMO_DIR)/pretrained

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
