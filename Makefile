# Two commands for a new user: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On a machine without CUDA take torch's CPU wheel before anything pulls the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# e.g. TORCH_PIP_ARGS='--index-url <your CPU wheel index>' elsewhere
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-slow test-all bench experiments docs docs-serve clean

$(BIN)/dtcond: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA found: installing the default torch build"; $(BIN)/pip install torch; \
	else \
	  echo "no CUDA: installing torch's CPU wheel ($(TORCH_SPEC) $(TORCH_PIP_ARGS))"; \
	  $(BIN)/pip install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS); \
	fi
	$(BIN)/pip install -e ".[dev,families,docs]"
	@touch $@

setup: $(BIN)/dtcond

demo: setup
	$(BIN)/dtcond demo

# The fast tier (a few minutes on 2 cores); the slow tier is the end-to-end runs: demo, experiments,
# notebooks, kill -9. CI (.ci/run) runs both.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q

# Speed benchmarks (not part of the tests): tables on stdout, JSON in benchmarks/results/. On the GPU
# when there is one (train_cuda.json, loop_cuda.json), else on the CPU (train_cpu.json, loop_cpu.json).
bench: setup
	$(BIN)/pip install -e ".[dev,bench]"
	$(BIN)/python benchmarks/rollout.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/loop.py
	$(BIN)/python benchmarks/eval_vs_train.py

# The safety experiments, each end to end (results/ in each folder; each has a page under docs/experiments/).
experiments: setup
	$(BIN)/python experiments/luck/run.py
	$(BIN)/python experiments/goodhart/run.py
	$(BIN)/python experiments/calibration/run.py
	$(BIN)/python experiments/cost/run.py
	$(BIN)/python experiments/cost_tradeoff/run.py

# The documentation site (mkdocs.yml, docs/): built strictly, so a broken link, image or include fails; CI runs it.
# The docs extra is installed first if this venv lacks it (a venv made before `make setup` installed it).
DOCS_TOOLS := $(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(BIN)/pip install -e ".[docs]"

docs: setup
	@$(DOCS_TOOLS)
	$(BIN)/mkdocs build --strict

docs-serve: setup
	@$(DOCS_TOOLS)
	$(BIN)/mkdocs serve

clean:
	rm -rf outputs multirun lightning_logs .pytest_cache site
