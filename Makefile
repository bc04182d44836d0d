# deqstream: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
CONFIG ?= tiny
HEIGHT ?= 256
WIDTH ?= 512
CHECKPOINT ?= checkpoints/tiny_sur.pt
ENGINES ?= engines
QUICK ?=
# The shipped checkpoint's recipe (README "The shipped checkpoint"): SUR, N ~ U{1..12}, full frames.
TRAIN_ARGS ?= --mode sur --iters 12 --batch 2 --crop 256 512 --lr 2e-3 --steps 20000 --time-limit 45 --seed 0 --threads 1

.PHONY: install kernels export train accuracy propagation demo bench test gpu gpu-wheels lint clean

# CPU-only machines get the CPU build of torch from the local wheel cache (never the
# multi-GB CUDA build); machines that already have torch (the GPU boxes) keep theirs.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"

kernels:
	$(PYTHON) -m kernels.build

export: install
	$(PYTHON) -m export --config $(CONFIG) --checkpoint $(CHECKPOINT) --height $(HEIGHT) --width $(WIDTH) --out $(ENGINES)

train: install
	$(PYTHON) -m export.train --config $(CONFIG) $(TRAIN_ARGS) --out $(CHECKPOINT)

# The exported engines of the shipped checkpoint, through the runtime's runners.
accuracy: export
	$(PYTHON) -m benchmarks.accuracy --engine $(ENGINES)/deq_cell.onnx --threads 1 $(if $(QUICK),--quick,)

# Every mode (frame, stream, stream-mv, mv, dff, mv-interp): mIoU and FPS, eager and deployed runtime.
propagation: install
	$(PYTHON) -m benchmarks.propagation $(if $(QUICK),--quick,)

demo: export
	$(PYTHON) -m runtime.demo --engines $(ENGINES)

bench: install
	$(PYTHON) -m benchmarks.fps $(if $(QUICK),--quick,)

test: install kernels
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -rs

# The GPU machines here have torch but no network: fetch the few extra wheels (Python 3.12)
# here with `make gpu-wheels`, carry .whl/ along, then run `make gpu` there. `make gpu` runs the
# gpu/tensorrt tests, the warp bandwidth benchmark and the full FPS benchmark; the results land in
# benchmarks/results/ (commit them).
WHEELS ?= .whl
GPU_WHEELS = av tqdm pytest
# The binding acceptance case; each extra config/resolution costs AOTI compiles (minutes each).
GPU_FPS_ARGS ?= --configs small-seg --resolutions 1024x2048 --precision fp32,fp16 --backends eager,aoti,tensorrt
gpu-wheels:
	$(PYTHON) -m pip download -q -d $(WHEELS) --only-binary=:all: --python-version 3.12 \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $(GPU_WHEELS)

gpu: kernels
	@if [ -d $(WHEELS) ]; then $(PYTHON) -m pip install -q --no-index --find-links $(WHEELS) $(GPU_WHEELS); fi
	$(PYTHON) -m pytest -rs -m "gpu or tensorrt"
	$(PYTHON) -m benchmarks.warp_bandwidth
	$(PYTHON) -m benchmarks.fps $(GPU_FPS_ARGS)

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .

clean:
	rm -rf $(ENGINES) out kernels/build .pytest_cache
