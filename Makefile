# Two commands for a newcomer: `make demo` and `make test`. Both install first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Tests run on 2 worker processes; JAX inside each stays on the CPU. loadgroup keeps a
# module marked xdist_group on one worker (its module fixtures run once); the order is
# the collection order, longest tests first (tests/conftest.py).
PYTEST_ARGS ?= -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

.PHONY: install demo test test-e2e test-fast lint fmt bench bench-compare bench-shakespeare \
	ablation clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/t5x-lite demo --workdir=runs/demo

# Every test but the multi-minute end-to-end runs (~9 min on 2 cores).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not e2e" tests

# Those (~16 min: the tiny GPT, BERT and T5 pretrained then fine-tuned, the real MiniLM
# fine-tuned and exported, which need T5X_LITE_DATA_DIR; benchmarks/device.sh at toy shapes;
# the two-process jax.distributed runs). CI runs them after `make test`.
test-e2e: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m e2e tests

# Skip every end-to-end check marked slow (~4 min).
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(VENV)/bin/t5x-lite bench --config=gin_configs/pretrain.py:gpt_small

# Our train step beside transformers' PyTorch models of the same shapes, fp32 and bf16: the
# README's side-by-side table. The shapes are the performance issue's (batch 8, d_model 512,
# 8 layers of 8 heads, vocabulary 32,128, sequence 512; T5 512 in / 114 out, d_ff 1024):
# gpt_small, roberta_small and t5_small with these overrides. Meant for a quiet machine
# (9 min on the 2-core EPYC); smaller: make bench-compare BENCH_SHAPES=--config.data.batch_size=2
# Both sides keep freed memory (the CLI's default; bench --torch_malloc=same);
# T5X_LITE_KEEP_FREED_MEMORY=0 make bench-compare: both with malloc's default.
BENCH_SHAPES ?= --config.data.batch_size=8 --config.tokenizer.vocab_size=32128 \
	--config.objective.seq_len=512 --config.model.num_layers=8 --config.model.num_heads=8
BENCH_ARGS ?=
bench-compare: $(STAMP)
	$(VENV)/bin/t5x-lite bench --compare=hf --precision=fp32,bf16 --steps=2 --reps=2 \
		--output_json=runs/bench_compare.json $(BENCH_SHAPES) $(BENCH_ARGS)

# nanoGPT's CPU recipe, ours (pretrain.py:shakespeare_char) against the same recipe in
# eager PyTorch (benchmarks/char_gpt_torch.py), whole commands alternated: the README's
# Shakespeare table (~13 min for 3 rounds on 2 cores). Needs T5X_LITE_DATA_DIR (below).
bench-shakespeare: $(STAMP)
	T5X_LITE_DATA_DIR=$(T5X_LITE_DATA_DIR) $(PY) benchmarks/shakespeare_char.py --rounds=3 --torch_keep_freed_memory \
		--output_json=runs/bench_shakespeare.json

# Two of experiments/'s studies at CPU scale (experiments/README.md): does pretraining help
# (each family and a real pretrained BERT), and T5's objectives: about 3 hours on 2 cores.
# Rerun to resume; tables, plots and provenance land in runs/sweeps/<study>/.
T5X_LITE_DATA_DIR ?= ../shared/data
ablation: $(STAMP)
	T5X_LITE_DATA_DIR=$(T5X_LITE_DATA_DIR) $(VENV)/bin/t5x-lite sweep \
		--sweep=experiments/pretraining_helps.py:cpu --workdir=runs/sweeps --jobs=2
	T5X_LITE_DATA_DIR=$(T5X_LITE_DATA_DIR) $(VENV)/bin/t5x-lite sweep \
		--sweep=experiments/t5_objectives.py:cpu --workdir=runs/sweeps --jobs=2

clean:
	rm -rf $(VENV) runs .pytest_cache
