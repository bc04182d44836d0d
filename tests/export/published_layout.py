"""Test helper: checkpoints laid out as the published MDEQ training scripts save them.

Written from notes/mdeq-streamdeq.md §2 and the reference's save calls (not from
export/checkpoint.py): weight norm as ``weight_g``/``weight_v`` on conv1/conv2 of every block
and on the post-fuse convs, the ``fullstage_copy.*``, ``deq.func.*`` and ``deq.func_copy.*``
duplicates, BN ``num_batches_tracked``. Segmentation saves ``FullModel(model, loss)``: every
model key under ``model.`` plus the cross entropy's class weights ``loss.criterion.weight``;
classification saves the bare model (its HRNet-style head: ``incre_modules``,
``downsamp_modules``, ``final_layer``, ``classifier``). ``save_layout`` writes any of them as
the final state dict, as the periodic ``checkpoint.pth.tar`` dict (epoch, best_mIoU as a numpy
float, optimizer and scheduler state) or with DataParallel's ``module.`` prefix. The folded
weight the import must produce is computed here independently (torch.linalg.vector_norm).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from export.config import MDEQConfig
from export.mdeq import MDEQSegNet

WN_CONV = re.compile(r"^fullstage\.(branches\.\d+\.blocks\.0\.conv[12]|post_fuse_layers\.\d+\.conv)\.weight$")
SEG_HEAD_PREFIX = "last_layer."
CLS_HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
# A few keys of the small ImageNet model's classification head (HEAD_CHANNELS 24.., FINAL_CHANSIZE 2048).
CLS_HEAD_KEYS = {
    "incre_modules.0.0.conv1.weight": (24, 32, 1, 1),
    "incre_modules.0.0.bn1.running_mean": (24,),
    "downsamp_modules.0.0.weight": (192, 96, 3, 3),
    "final_layer.0.weight": (2048, 768, 1, 1),
    "classifier.weight": (1000, 2048),
    "classifier.bias": (1000,),
}
LAYOUTS = ("final", "checkpoint_tar", "dataparallel", "dataparallel_tar")


def reference_model(cfg: MDEQConfig, seed: int = 0) -> MDEQSegNet:
    """A model with non-trivial norms/statistics so a mis-mapped key changes the output."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MDEQSegNet(cfg).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.startswith(("injection.", "head.")) or not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.dim() == 1:  # GN/BN affine weights
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    return model


def folded(g: Tensor, v: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


def _is_head(cfg: MDEQConfig, key: str) -> bool:
    return key.startswith(CLS_HEAD_PREFIXES if cfg.task == "cls" else SEG_HEAD_PREFIX)


def published_state_dict(
    cfg: MDEQConfig,
    seed: int = 0,
    copies: bool = True,
    fullstage: bool = True,
    head: bool = True,
    loss: bool = True,
) -> tuple[dict[str, Tensor], MDEQSegNet]:
    """(state dict as the reference's final save writes it, the model holding the folded weights).

    seg: ``model.*`` keys plus ``loss.criterion.weight`` (unless ``loss=False``); cls: bare keys.
    ``fullstage=False`` leaves only ``deq.func.*`` for the cell; ``copies`` adds the duplicates
    (filled with garbage, so importing the wrong copy is caught); ``head=False`` leaves the
    task head out (a trunk-only file: its head must not be exported silently).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    ref = reference_model(cfg, seed)
    canonical = {k: v for k, v in ref.state_dict().items() if not k.startswith(("injection.", "head."))}
    cell: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for k, t in canonical.items():
            if not head and _is_head(cfg, k):
                continue
            if WN_CONV.match(k):
                v = torch.randn(t.shape, generator=gen)
                g = torch.rand((t.shape[0], 1, 1, 1), generator=gen) + 0.5
                t.copy_(folded(g, v))  # the reference holds the folded weight
                entries = {k[: -len("weight")] + "weight_g": g, k[: -len("weight")] + "weight_v": v}
            else:
                entries = {k: t.clone() if k.startswith("fullstage.") else t}
            for name, val in entries.items():
                if name.startswith("fullstage."):
                    cell[name[len("fullstage.") :]] = val
                else:
                    out[name] = val
    if fullstage:
        out.update({"fullstage." + k: v for k, v in cell.items()})
    out.update({"deq.func." + k: v for k, v in cell.items()})
    if copies:
        plain = {k: t for k, t in canonical.items() if k.startswith("fullstage.")}
        for k, t in plain.items():
            junk = torch.full((), 7.0).expand(t.shape) if t.is_floating_point() else t  # a view: no memory
            out["fullstage_copy." + k[len("fullstage.") :]] = junk
            out["deq.func_copy." + k[len("fullstage.") :]] = junk
    if cfg.task == "cls":
        return out, ref  # cls_train.py saves model.module.state_dict(): no wrapper
    sd = {"model." + k: v for k, v in out.items()}
    if loss:  # FullModel(model, CrossEntropy(weight=class_weights))
        sd["loss.criterion.weight"] = torch.rand(cfg.num_classes, generator=gen) + 0.5
    return sd, ref


def _optimizer_state(sd: dict[str, Tensor]) -> tuple[dict, dict]:
    """SGD-with-momentum and cosine-scheduler state dicts of the kind the scripts save."""
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)
    return opt.state_dict(), sched.state_dict()


def layout(sd: dict[str, Tensor], kind: str, task: str = "seg") -> dict:
    """The object a reference save path writes around ``sd``:

    final: the state dict itself (seg ``final_state.pth``/``best.pth``, cls ``final_state.pth.tar``);
    checkpoint_tar: the periodic ``checkpoint.pth.tar`` dict (seg: epoch, best_mIoU, state_dict,
    optimizer, lr_scheduler; cls: epoch, model, state_dict, perf, optimizer, lr_scheduler);
    dataparallel(_tar): the same with every key under ``module.`` (a DataParallel saved whole).
    """
    if kind.startswith("dataparallel"):
        sd = {"module." + k: v for k, v in sd.items()}
    if not kind.endswith("tar"):
        return sd
    optimizer, scheduler = _optimizer_state(sd)
    if task == "cls":
        extra = {"epoch": 12, "model": "mdeq", "perf": torch.tensor(71.2)}
    else:
        extra = {"epoch": 12, "best_mIoU": np.float64(0.7734)}  # mean_IoU is a numpy float
    return {**extra, "state_dict": sd, "optimizer": optimizer, "lr_scheduler": scheduler}


def save_layout(sd: dict[str, Tensor], path: Path, kind: str, task: str = "seg") -> Path:
    torch.save(layout(sd, kind, task), path)
    return path
