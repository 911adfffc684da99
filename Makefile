# Entry points of the project. `make help` lists them. Every target runs the one Hydra app,
# `python -m coordchannels`; ARGS passes any Hydra override through, e.g.
#   make reproduce TASK=ecg ARGS="train.epochs=3 stats.method=exact"
# LAUNCHER (reproduce, train) says what runs the training jobs (the train.executor setting), e.g.
#   make reproduce TASK=ecg LAUNCHER=slurm ARGS="train.submitit.slurm_partition=gpu"

SHELL := /bin/bash
.DEFAULT_GOAL := help

TASK ?= all
ARGS ?=
LAUNCHER ?= local
VFDB_DIR ?=
SIPAKMED_DIR ?=
PUBLISHED_LOGS_DIR ?=
LOGS ?=
OUT ?=

VENV := .venv
# The Python that runs the project; PY=python3 uses another one (e.g. a GPU machine's own, with
# PYTHONPATH=src), skipping `make setup`.
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed
TASKS := $(if $(filter all,$(TASK)),ecg coordgate sipakmed,$(TASK))
# Local mirrors become Hydra overrides of the paths config.
# The outer double quotes are for the shell, the inner single quotes for Hydra, so that folder
# names with spaces, commas or brackets reach the config unchanged.
MIRRORS := $(if $(VFDB_DIR),"paths.vfdb_mirror='$(VFDB_DIR)'") \
  $(if $(SIPAKMED_DIR),"paths.sipakmed_mirror='$(SIPAKMED_DIR)'") \
  $(if $(PUBLISHED_LOGS_DIR),"paths.published_logs_mirror='$(PUBLISHED_LOGS_DIR)'")
APP := $(PY) -m coordchannels
# LAUNCHER as settings of the train stage (conf/train/default.yaml, conf/train/submitit/): local =
# jobs side by side on this machine (train.n_jobs, the default executor); slurm and submitit_local =
# the same stages, with the train stage's jobs, one per (model, arm, seed, fold), each submitted
# through submitit (to SLURM, or as a process on this machine) and waited for (coordchannels.train.submit).
LAUNCHERS := local slurm submitit_local
EXECUTOR_local :=
EXECUTOR_slurm := train.executor=submitit train/submitit=slurm
EXECUTOR_submitit_local := train.executor=submitit train/submitit=local
$(if $(filter $(LAUNCHERS),$(LAUNCHER)),,$(error LAUNCHER=$(LAUNCHER): give one of $(LAUNCHERS)))
RUN := $(strip $(APP) $(EXECUTOR_$(LAUNCHER)))

# Runs write their tables and figures under data/results/ (scratch). The targets that regenerate
# the committed results/ say so on purpose with PUBLISH; the stats stage refuses to replace a
# committed result made with other settings (stats.replace_results=true to do it anyway).
PUBLISH := 'paths.outputs_dir=$${paths.results_dir}'
SMOKE_DIR := data/smoke

.PHONY: help setup lint format docs test test-slow reproduce data train stats table3 ecg-record ecg-arms \
  ecg-arms-episode ecg-arms-record ecg-seeds-record coordgate deblur deblur-paper smoke plan restats results-index verify replicate \
  ecg-replications compare-replication mechanisms mechanisms-results mechanisms-plan demo gpu-check bench-gpu clean-runs

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'
	@echo "Variables: TASK=ecg|coordgate|sipakmed|deblur|all (default all: not deblur)  ARGS='<hydra overrides>'"
	@echo "           LAUNCHER=local|slurm|submitit_local (reproduce, train; default local)"
	@echo "           VFDB_DIR=<local VFDB mirror>  SIPAKMED_DIR=<local SiPaKMeD archives or tree>"
	@echo "           PUBLISHED_LOGS_DIR=<local copy of the authors' published per-fold logs> (for make table3)"
	@echo "           LOGS=<per-fold log folder> OUT=<output folder> (for make stats)"
	@echo "Runs write under data/ (results: data/results/<task>); results/ holds the committed results."

setup: $(STAMP) ## create .venv and install the pinned dependencies (idempotent)

$(STAMP): pyproject.toml
	@echo "setup: creating the virtual environment $(VENV) (once)"
	@test -d $(VENV) || python3 -m venv $(VENV)
	@echo "setup: installing the pinned dependencies into $(VENV) (a few minutes the first time: torch is large)"
	@$(VENV)/bin/python -m pip install --quiet --upgrade pip
	@$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)
	@echo "setup: done. Run \`source $(VENV)/bin/activate\` once per shell to use the \`coordchannels\` command."

lint: setup ## check style, formatting and common mistakes (ruff), as CI does
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

format: setup ## apply the project's formatting and import order (ruff)
	$(PY) -m ruff check --fix --select I src tests scripts
	$(PY) -m ruff format src tests scripts

docs: setup ## build the documentation site from docs/ into site/ (strict: a broken link or anchor fails)
	$(PY) -m mkdocs build --strict --quiet

test: setup ## run the default test suite (no network, no GPU, no slow tests)
	$(PY) -m pytest

test-slow: setup ## run every test, the slow ones included
	$(PY) -m pytest -m ""

reproduce: setup ## the whole pipeline, every stage, for TASK (training through LAUNCHER)
	@for t in $(TASKS); do \
	  echo "== reproduce: task $$t =="; \
	  $(RUN) task=$$t $(MIRRORS) $(ARGS) || exit 1; \
	done

data: setup ## download and prepare the data (stages before training) for TASK
	@for t in $(TASKS); do \
	  echo "== data: task $$t =="; \
	  $(APP) task=$$t 'stages=$${task.data_stages}' $(MIRRORS) $(ARGS) || exit 1; \
	done

train: setup ## train every job (model x arm x fold) of TASK, skipping finished ones (through LAUNCHER)
	@for t in $(TASKS); do $(RUN) task=$$t stages=[train] $(ARGS) || exit 1; done

# `key=value` as one shell word holding a Hydra single-quoted string, so that any folder name
# (spaces, apostrophes, double quotes, commas, brackets, `=`) reaches the config unchanged:
# Hydra escapes ' as \' inside its quotes; the shell word is single-quoted, ' written '\''.
# Not supported: a backslash just before an apostrophe or at the end, `${` (a config
# interpolation), and `$` (make's own; write $$).
hydra_arg = '$(subst ','\'',$(1)='$(subst ',\',$(2))')'

stats: setup ## statistics and figures for a folder of per-fold logs: make stats LOGS=<dir> OUT=<dir>
	@$(if $(and $(strip $(LOGS)),$(strip $(OUT))),true,echo "usage: make stats LOGS=<dir> OUT=<dir>"; exit 2)
	$(APP) stages=[stats] $(call hydra_arg,stats.logs_dir,$(LOGS)) \
	  $(call hydra_arg,stats.out_dir,$(OUT)) $(ARGS)

table3: setup ## fetch the authors' published per-fold logs and re-derive the paper's Table 3 -> results/published_table3
	$(APP) stages=[published_logs,stats] $(MIRRORS) 'stats.logs_dir=$${paths.published_logs_dir}' \
	  'stats.out_dir=$${paths.results_dir}/published_table3' $(ARGS)
	$(PY) -m coordchannels.index

ecg-record: setup ## regenerate the committed ECG result with record grouping -> results/ecg_record
	$(APP) experiment=ecg_record $(PUBLISH) $(MIRRORS) $(ARGS)
	$(PY) -m coordchannels.index

ecg-arms: ecg-arms-episode ecg-arms-record ecg-seeds-record ## the three below (ARGS go to each) -> results/ecg_arms

ecg-arms-episode: setup ## regenerate NimeshaNet with every arm, episode grouping -> results/ecg_arms/episode
	$(APP) experiment=ecg_arms $(PUBLISH) $(MIRRORS) $(ARGS)
	$(PY) -m coordchannels.index

ecg-arms-record: setup ## regenerate NimeshaNet with every arm, record grouping -> results/ecg_arms/record
	$(APP) experiment=ecg_arms_record $(PUBLISH) $(MIRRORS) $(ARGS)
	$(PY) -m coordchannels.index

ecg-seeds-record: setup ## regenerate study vs control over 3 seeds, record grouping -> results/ecg_arms/record_3seeds
	$(APP) experiment=ecg_seeds_record $(PUBLISH) $(MIRRORS) $(ARGS)
	$(PY) -m coordchannels.index

coordgate: setup ## regenerate the committed CoordGate 1-D experiment -> results/coordgate (about 40 min on 2 CPU cores)
	$(APP) task=coordgate $(PUBLISH) $(ARGS)
	$(PY) -m coordchannels.index

deblur: setup ## regenerate the deblurring result (task=deblur, CPU scale, ~40 min on 2 cores; docs/deblur.md) -> results/deblur
	$(APP) task=deblur $(PUBLISH) $(ARGS)
	$(PY) scripts/bench_deblur.py --out results/benchmarks/deblur_train_cpu
	$(PY) -m coordchannels.index

deblur-paper: setup ## CoordGate's deblurring at the paper's scale (20000 images, 600 epochs: for a GPU; `make plan TASK=deblur ARGS=experiment=deblur_paper` first) -> data/results/deblur
	$(APP) experiment=deblur_paper $(ARGS)

smoke: setup ## every ECG stage with tiny settings into data/smoke (from scratch, ~1 min; its numbers mean nothing)
	rm -rf $(SMOKE_DIR)
	$(APP) task=ecg debug=smoke $(MIRRORS) $(ARGS)
	@echo "smoke: every stage ran; tables and figure in $(SMOKE_DIR)/results/ecg (a smoke run: its numbers mean nothing)"

plan: setup ## print the training plan of TASK (jobs, device, estimated time) and stop; writes nothing
	@for t in $(TASKS); do $(APP) task=$$t dry_run=true hydra.run.dir=. hydra.output_subdir=null \
	  hydra/job_logging=stdout $(MIRRORS) $(ARGS) || exit 1; done

restats: setup ## recompute every committed table from its committed per-fold logs (per-fold values must not change)
	$(PY) -m coordchannels.stats.restats
	$(PY) -m coordchannels.index

results-index: setup ## regenerate results/README.md, the index of every committed result
	$(PY) -m coordchannels.index

verify: setup ## check every committed result under results/ against the SHA-256 in its manifest
	$(PY) -m coordchannels.verify

# A study of replications is one Hydra sweep of the app (-m): each replication (every grouping of
# replicate.groupings x replicate.first..replicate.n) an ordinary run, one after another, then the
# summary stage once (conf/study/replications.yaml, coordchannels.sweep). ARGS="replicate.n=10
# replicate.first=6" adds replications 6-10 without touching 1-5; replicate.first=n+1: only the summary.
replicate: setup ## independent re-runs of the ECG study under both groupings -> data/results/ecg_replications (hours on a CPU)
	$(APP) -m experiment=ecg_replications $(MIRRORS) $(ARGS)

ecg-replications: setup ## regenerate the committed replications -> results/ecg_replications (on the CPU model they were made on)
	$(APP) -m experiment=ecg_replications $(PUBLISH) $(MIRRORS) $(ARGS)
	$(PY) -m coordchannels.index

FRESH ?= data/results/ecg_replications
COMMITTED ?= results/ecg_replications
compare-replication: setup ## compare a fresh replication (FRESH, default data/results/ecg_replications) with the committed one by statistic
	$(PY) -m coordchannels.compare_replication '$(FRESH)' '$(COMMITTED)' $(ARGS)

# The mechanisms study (docs/mechanisms.md), a sweep of its replications as above: writes to
# data/results/ecg_mechanisms (scratch); mechanisms-results publishes to results/ecg_mechanisms.
MECHANISMS := $(APP) -m experiment=ecg_mechanisms $(MIRRORS)

mechanisms: setup ## every arm x 5 folds x 5 replications per grouping, pre-stated analysis -> data/results/ecg_mechanisms (hours)
	$(MECHANISMS) $(ARGS)

mechanisms-results: setup ## the mechanisms study, published -> results/ecg_mechanisms
	$(MECHANISMS) $(PUBLISH) $(ARGS)
	$(PY) -m coordchannels.index

mechanisms-plan: setup ## print the mechanisms study's jobs, reusable committed logs and estimate; writes nothing
	$(MECHANISMS) dry_run=true $(ARGS)

demo: setup ## a generated 100-cell SiPaKMeD through every 2-D stage on a CPU, into data/demo
	test -d data/demo/fake_sipakmed || $(PY) -m coordchannels.sipakmed.synthetic data/demo/fake_sipakmed --cells 100 --tree
	$(APP) task=sipakmed debug=smoke 'paths.data_dir=$${paths.root_dir}/data/demo' \
	  paths.sipakmed_mirror=data/demo/fake_sipakmed task.data.fetch_authors_invalid=false \
	  'train.models=[lakshyanet_reduced]' train.limit_train=16 train.limit_test=16 $(ARGS)

gpu-check: ## on a CUDA machine: the GPU tests (CUDA vs CPU, resume, checkpoints across devices, fast paths vs seed noise), then the GPU benchmarks
	$(PY) -m pytest -m gpu -ra -p no:cacheprovider tests/test_gpu.py
	$(MAKE) bench-gpu PY="$(PY)" SETUP=

# The SiPaKMeD training benchmark in the three GPU settings worth comparing, one report each.
BENCH_GPU := $(PY) scripts/bench_sipakmed.py --device cuda --images 1000 --steps 200 --baseline-samples 2000
SETUP ?= setup
bench-gpu: $(SETUP) ## SiPaKMeD training benchmark on a CUDA GPU: fp32, bf16 + channels-last, + torch.compile -> results/benchmarks/
	$(BENCH_GPU) --out results/benchmarks/sipakmed_train_gpu_fp32.md
	$(BENCH_GPU) --amp --channels-last --out results/benchmarks/sipakmed_train_gpu_bf16_cl.md
	$(BENCH_GPU) --amp --channels-last --compile --out results/benchmarks/sipakmed_train_gpu_bf16_cl_compile.md

clean-runs: ## delete training runs (checkpoints and logs under data/runs)
	rm -rf data/runs
