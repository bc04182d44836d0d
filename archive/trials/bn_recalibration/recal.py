"""Trial (2026-12-01): re-estimate the injection BatchNorm running statistics of a checkpoint on clean frames.

usage: python archive/trials/bn_recalibration/recal.py SRC.pt DST.pt BATCHES (100 batches of 2 used)
"""

import sys

import numpy as np
import torch

from export.checkpoint import load_checkpoint, save_checkpoint
from export.synthetic import random_batch

src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
model, meta = load_checkpoint(src)
model.eval()
bns = [m for m in model.injection.modules() if isinstance(m, torch.nn.BatchNorm2d)]
for m in bns:
    m.reset_running_stats()
    m.momentum = None  # a cumulative average over all batches
    m.train()
rng = np.random.default_rng([12345, 777])
with torch.no_grad():
    for _ in range(n):
        frames, _ = random_batch(rng, 2, 256, 512, variant=meta.get("variant", "plain"))
        model.injection(torch.from_numpy(frames))
for m in bns:
    m.momentum = 0.01
    m.eval()
save_checkpoint(model, dst, {**meta, "bn_recalibrated": n})
