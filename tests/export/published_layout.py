"""Test helper: state dicts in the key layout of the published MDEQ checkpoints.

Written from notes/mdeq-streamdeq.md §2 (not from export/checkpoint.py): weight norm as
``weight_g``/``weight_v`` on conv1/conv2 of every block and on the post-fuse convs, the
``model.`` prefix of FullModel, the ``fullstage_copy.*``, ``deq.func.*`` and
``deq.func_copy.*`` duplicates, BN ``num_batches_tracked``. The folded weight the import
must produce is computed here independently (torch.linalg.vector_norm over dims 1..3).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from export.config import MDEQConfig
from export.mdeq import MDEQSegNet

WN_CONV = re.compile(r"^fullstage\.(branches\.\d+\.blocks\.0\.conv[12]|post_fuse_layers\.\d+\.conv)\.weight$")
CLS_HEAD_KEYS = {
    "incre_modules.0.0.conv1.weight": (24, 32, 1, 1),
    "incre_modules.0.0.bn1.running_mean": (24,),
    "downsamp_modules.0.0.weight": (192, 96, 3, 3),
    "final_layer.0.weight": (2048, 768, 1, 1),
    "classifier.weight": (1000, 2048),
    "classifier.bias": (1000,),
}


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


def published_state_dict(
    cfg: MDEQConfig,
    seed: int = 0,
    copies: bool = True,
    fullstage: bool = True,
    cls_head: bool = False,
) -> tuple[dict[str, Tensor], MDEQSegNet]:
    """(published-layout state dict, the reference model holding the folded weights).

    ``fullstage=False`` leaves only ``deq.func.*`` for the cell; ``copies`` adds the
    duplicates (filled with garbage, so importing the wrong copy is caught); ``cls_head``
    replaces ``last_layer`` by classification-head keys.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    ref = reference_model(cfg, seed)
    canonical = {k: v for k, v in ref.state_dict().items() if not k.startswith(("injection.", "head."))}
    cell: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for k, t in canonical.items():
            if cls_head and k.startswith("last_layer."):
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
    if cls_head:
        out.update({k: torch.randn(s, generator=gen) for k, s in CLS_HEAD_KEYS.items()})
    return {"model." + k: v for k, v in out.items()}, ref
