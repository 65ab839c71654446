# VQ-VAE + PixelCNN pipeline. `make demo` runs it all on built-in data; `make test` runs the tests.
# Stage targets are file targets chained on the artifacts each stage writes, so `make sample`
# builds only what is missing. `make help` lists the targets and variables.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Stage targets need the virtual environment; tests running inside another one set NEED_VENV= .
NEED_VENV ?= $(INSTALLED)

DATASET ?= cifar10
DATA_DIR ?= data
RUN_DIR ?= runs
DEVICE ?= auto
EPOCHS ?=
PRIOR_EPOCHS ?=
N_SAMPLES ?= 64
VQVAE_ARGS ?=
PRIOR_ARGS ?=
SAMPLE_ARGS ?=
EVAL_ARGS ?=
COMPLETE_ARGS ?=
GUIDANCE_ARGS ?=
SERVE_ARGS ?=
PYTEST_ARGS ?=
# NPROC=N trains on N processes (GPUs) with torchrun; empty: one process.
NPROC ?=
LAUNCH = $(if $(NPROC),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC),$(PY))
BENCH_ARGS ?=
RECOMMEND_ARGS ?=

VQVAE_CKPT := $(RUN_DIR)/vqvae/ckpt.pt
CODES_META := $(RUN_DIR)/codes/meta.json
PRIOR_CKPT := $(RUN_DIR)/prior/ckpt.pt
SAMPLES := $(RUN_DIR)/samples/samples.png
EVAL := $(RUN_DIR)/eval/eval.json
COMPLETIONS := $(RUN_DIR)/complete/completions.png
GUIDANCE := $(RUN_DIR)/guidance/guidance.json

# Encoding follows the dataset the checkpoint was trained on unless DATASET/DATA_DIR are given.
given = $(filter command line environment,$(origin $(1)))
ENCODE_DATA := $(if $(call given,DATASET),--dataset $(DATASET)) $(if $(call given,DATA_DIR),--data-dir $(DATA_DIR))
# A stage whose output exists but is older than its input is out of date: retrain it from scratch.
fresh_if_stale = $(if $(wildcard $@),--fresh)
# --eval-only and --fresh act on a finished stage, so a target given either one runs even when its file exists.
forced_by = $(if $(filter --eval-only --fresh,$(1)),FORCE)

# The demo: small built-in shapes data, settings sized for about 4 minutes on 2 CPU cores.
# Both demos' priors train 6 epochs, too few to overfit: they keep the lighter dropout they were measured with.
DEMO_VARS := RUN_DIR=runs/demo DATASET=shapes EPOCHS=8 PRIOR_EPOCHS=6 N_SAMPLES=64 \
	VQVAE_ARGS="--shapes-train 4000 --shapes-test 500 --codebook-size 128 --batch-size 64 --lr 5e-4" \
	PRIOR_ARGS="--hidden-channels 64 --batch-size 64 --lr 1e-3 --dropout 0.1"
# The two-level demo: shapes at 64 px, top 4x4 + bottom 8x8 codes (downsample 8), under 10 minutes on 2 CPU cores.
# Stage 1 is narrower than the default (64 channels): 3x the images per second, so 20 epochs fit.
# On these shapes VQ-VAE-2's concat join beats the default residual one (24.39 against 23.86 dB on validation).
DEMO_HIERARCHICAL_VARS := RUN_DIR=runs/demo-hierarchical DATASET=shapes EPOCHS=20 PRIOR_EPOCHS=6 N_SAMPLES=64 \
	VQVAE_ARGS="--levels 2 --image-size 64 --downsample 8 --shapes-train 3000 --shapes-test 500 --codebook-size 128 --hidden-channels 64 --batch-size 64 --lr 2e-3 --top-join concat" \
	PRIOR_ARGS="--hidden-channels 64 --batch-size 64 --lr 1e-3 --dropout 0.1"

.PHONY: FORCE help install train-vqvae encode-dataset train-prior sample evaluate complete choose-guidance serve demo demo-hierarchical test bench clean distclean

help:
	@echo "make demo            whole pipeline on built-in shapes data -> runs/demo/samples/samples.png"
	@echo "make demo-hierarchical  two code levels on 64 px shapes -> runs/demo-hierarchical/samples/samples.png"
	@echo "make test            run the test suite"
	@echo "make train-vqvae     stage 1  -> \$$(RUN_DIR)/vqvae/ckpt.pt"
	@echo "make encode-dataset  codes    -> \$$(RUN_DIR)/codes/{train,val,test}.npy, meta.json (2 levels: *_top.npy, *_bottom.npy)"
	@echo "make train-prior     stage 2  -> \$$(RUN_DIR)/prior/ckpt.pt"
	@echo "make sample          samples  -> \$$(RUN_DIR)/samples/samples.png, samples.npy"
	@echo "make evaluate        figures  -> \$$(RUN_DIR)/eval/eval.json (PSNR, bits/code, bits/dim, FID, KID), recon.png, samples.png"
	@echo "make complete        prior completes the lower half of test images -> \$$(RUN_DIR)/complete/completions.png"
	@echo "make choose-guidance class-conditional prior: its default guidance scale, chosen on validation and stored"
	@echo "                     in prior/ckpt.pt -> \$$(RUN_DIR)/guidance/guidance.json, guidance.png"
	@echo "make serve           a local web page over a finished run: samples drawn row by row, classes, completions,"
	@echo "                     curves (prints its address; SERVE_ARGS=\"--port 0 --host ...\")"
	@echo "make bench           speed of every stage on this device -> bench.json"
	@echo "make recommend       do item codes help cold items? synthetic ratings (DATASET=movielens: ml-latest-small)"
	@echo "                     -> \$$(RUN_DIR)/recommend/results.json, item_codes.npy (other flags: RECOMMEND_ARGS)"
	@echo "make clean           remove runs/ (make distclean: also the virtual environment)"
	@echo "variables: DATASET=cifar10|folder|shapes DATA_DIR RUN_DIR DEVICE EPOCHS PRIOR_EPOCHS N_SAMPLES NPROC"
	@echo "           VQVAE_ARGS PRIOR_ARGS SAMPLE_ARGS EVAL_ARGS COMPLETE_ARGS GUIDANCE_ARGS SERVE_ARGS (any other flag; see python -m <module> --help)"

install: $(INSTALLED)

FORCE:

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	$(VENV)/bin/python -c "import torch, torchvision, numpy, tqdm; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

train-vqvae: $(VQVAE_CKPT)
$(VQVAE_CKPT): $(call forced_by,$(VQVAE_ARGS)) | $(NEED_VENV)
	$(LAUNCH) -m stage1_vqvae.train --dataset $(DATASET) --data-dir $(DATA_DIR) --out-dir $(@D) \
		--device $(DEVICE) $(if $(EPOCHS),--epochs $(EPOCHS)) $(VQVAE_ARGS)

encode-dataset: $(CODES_META)
$(CODES_META): $(VQVAE_CKPT) | $(NEED_VENV)
	$(PY) -m stage1_vqvae.encode --ckpt $< --out-dir $(@D) --device $(DEVICE) $(ENCODE_DATA)

train-prior: $(PRIOR_CKPT)
$(PRIOR_CKPT): $(CODES_META) $(call forced_by,$(PRIOR_ARGS)) | $(NEED_VENV)
	$(LAUNCH) -m stage2_prior.train --codes-dir $(<D) --out-dir $(@D) --device $(DEVICE) \
		$(if $(PRIOR_EPOCHS),--epochs $(PRIOR_EPOCHS)) $(fresh_if_stale) $(PRIOR_ARGS)

sample: $(SAMPLES)
$(SAMPLES): $(PRIOR_CKPT) $(VQVAE_CKPT) | $(NEED_VENV)
	$(PY) -m tools.sample --prior $(PRIOR_CKPT) --vqvae $(VQVAE_CKPT) --out-dir $(@D) \
		--n $(N_SAMPLES) --device $(DEVICE) $(SAMPLE_ARGS)

evaluate: $(EVAL)
$(EVAL): $(PRIOR_CKPT) $(VQVAE_CKPT) $(CODES_META) | $(NEED_VENV)
	$(PY) -m tools.evaluate --run-dir $(RUN_DIR) --device $(DEVICE) $(ENCODE_DATA) $(EVAL_ARGS)

complete: $(COMPLETIONS)
$(COMPLETIONS): $(PRIOR_CKPT) $(VQVAE_CKPT) $(CODES_META) | $(NEED_VENV)
	$(PY) -m tools.complete --run-dir $(RUN_DIR) --device $(DEVICE) $(ENCODE_DATA) $(COMPLETE_ARGS)

# It rewrites the prior's default scale before writing guidance.json: samples drawn before are out of date.
choose-guidance: $(GUIDANCE)
$(GUIDANCE): $(PRIOR_CKPT) $(VQVAE_CKPT) $(CODES_META) | $(NEED_VENV)
	$(PY) -m tools.choose_guidance --run-dir $(RUN_DIR) --device $(DEVICE) $(ENCODE_DATA) $(GUIDANCE_ARGS)

# Serves what RUN_DIR has (a missing stage is shown on the page), so it builds nothing first.
serve: | $(NEED_VENV)
	$(PY) -m tools.serve --run-dir $(RUN_DIR) --device $(DEVICE) $(SERVE_ARGS)

demo: | $(NEED_VENV)
	$(MAKE) --no-print-directory sample $(DEMO_VARS) DEVICE=$(DEVICE)
	@echo "demo done: open runs/demo/samples/samples.png (reconstructions: runs/demo/vqvae/recon_epoch*.png)"

demo-hierarchical: | $(NEED_VENV)
	$(MAKE) --no-print-directory sample $(DEMO_HIERARCHICAL_VARS) DEVICE=$(DEVICE)
	@echo "demo done: open runs/demo-hierarchical/samples/samples.png (reconstructions: runs/demo-hierarchical/vqvae/recon_epoch*.png)"

test: | $(NEED_VENV)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: | $(NEED_VENV)
	$(PY) -m tools.bench --device $(DEVICE) $(BENCH_ARGS)

# The recommender experiment reads ratings, not images: DATASET is synthetic unless given (the image default is cifar10).
.PHONY: recommend
recommend: | $(NEED_VENV)
	$(PY) -m tools.recommend --dataset $(if $(call given,DATASET),$(DATASET),synthetic) --data-dir $(DATA_DIR) \
		--out-dir $(RUN_DIR)/recommend --device $(DEVICE) $(RECOMMEND_ARGS)

clean:
	rm -rf runs

distclean: clean
	rm -rf $(VENV) *.egg-info
