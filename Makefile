# Two entry points for a fresh machine: `make audit` (the main job) and `make test`.
# Everything installs into .venv from the project's own files; torch is pinned by
# constraints.txt to the CPU build (without the pin pip resolves a multi-GB CUDA build).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet -c constraints.txt
OUT    ?= out

.PHONY: audit test lint typecheck check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The light install: core + Pillow (image checks, report thumbnails) + YAML policies.
$(VENV)/.core: $(PY) pyproject.toml constraints.txt
	$(PIP) -e '.[images,yaml]'
	@touch $@

# Everything: the local backend (CPU torch), LangChain, OpenAI, test and lint tools.
$(VENV)/.dev: $(PY) pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	@touch $@ $(VENV)/.core

audit: $(VENV)/.core
	@mkdir -p $(OUT)
	$(VENV)/bin/traceguard audit examples/logs --out $(OUT)/verdicts.jsonl --report $(OUT)/report.html --cache $(OUT)/cache.sqlite

test: $(VENV)/.dev
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

check: lint test

bench: $(VENV)/.dev
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
