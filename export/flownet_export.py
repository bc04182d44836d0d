"""Add a FlowNet engine (``flownet``) to an existing bundle, for the runtime's ``--mode dff``.

``frame, key_frame (B, H, W, 3) uint8 -> flow0..flow{n-1} (B, 2, H/s_i, W/s_i), scale0..scale{n-1}
(B, C_i, H/s_i, W/s_i)``: one flow and one scale field per state scale, so the runtime warps z_i
with ``flow_i`` and multiplies by ``scale_i`` with no resampling of its own. The engine goes
through the same export + parity gate as the MDEQ engines (:func:`export.bundle.export_engine`:
ONNX Runtime / AOTInductor vs PyTorch on inputs other than the traced ones), then its files are
moved into the bundle and ``manifest.json`` is rewritten atomically with the new entry.

    python -m export.flownet_export --bundle engines --checkpoint checkpoints/flownet_tiny.pt
    python -m export --checkpoint checkpoints/tiny_sur.pt --flownet checkpoints/flownet_tiny.pt

Flows stay fp32 (the warp kernels take float32 displacements), so only fp32 bundles are accepted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from export.bundle import EngineGraph, export_engine
from export.manifest import ManifestError, read_manifest, write_manifest

ENGINE = "flownet"


def flownet_names(n: int) -> tuple[list[str], list[str]]:
    """Fixed tensor names of the flownet engine for an n-scale state."""
    return ["frame", "key_frame"], [f"flow{i}" for i in range(n)] + [f"scale{i}" for i in range(n)]


def sample_pair(batch: int, height: int, width: int, seed: int, shift: int = 3) -> tuple[Tensor, Tensor]:
    """A smooth random frame and the same frame shifted: realistic inputs for parity checks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (batch, height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    big = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    frame = big[:, :height, shift : shift + width]
    key = big[:, :height, :width]
    return torch.from_numpy(np.ascontiguousarray(frame)), torch.from_numpy(np.ascontiguousarray(key))


def check_compatible(net: nn.Module, manifest: dict[str, Any]) -> None:
    """The FlowNet's scale fields must match the bundle's state channels; fp32 bundles only."""
    chans = tuple(int(s["shape"][1]) for s in manifest["state"])
    if tuple(getattr(net, "channels", ())) != chans:
        raise ValueError(
            f"the FlowNet was built for state channels {getattr(net, 'channels', None)}, bundle has {chans}"
        )
    if manifest.get("precision", "fp32") != "fp32":
        raise ValueError(f"flownet engines are fp32 only; the bundle is {manifest.get('precision')}")


def build_graph(net: nn.Module, manifest: dict[str, Any], device: str = "cpu") -> EngineGraph:
    """The EngineGraph of the FlowNet at the bundle's batch and resolution."""
    b, h, w = int(manifest["batch"]), int(manifest["height"]), int(manifest["width"])
    inputs, outputs = flownet_names(len(manifest["state"]))
    trace = [t.to(device) for t in sample_pair(b, h, w, seed=1)]
    check = [t.to(device) for t in sample_pair(b, h, w, seed=2, shift=5)]
    return EngineGraph(ENGINE, net.to(device).eval(), trace, check, inputs, outputs)


def add_flownet(
    bundle_dir: str | os.PathLike[str],
    net: nn.Module,
    formats: Sequence[str] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export ``net`` into the bundle as ``flownet`` (default: the formats the deq_cell has).

    Raises ValueError/ManifestError on a bad bundle and ParityError when the engine disagrees
    with PyTorch; then the bundle is left as it was. Returns the new manifest entry.
    """
    log = log or (lambda _msg: None)
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    check_compatible(net, manifest)
    kinds = list(formats or manifest["engines"]["deq_cell"]["files"])
    graph = build_graph(net, manifest, device)
    tmp = Path(tempfile.mkdtemp(prefix=".flownet.tmp-", dir=root))
    try:
        entry = export_engine(graph, tmp, kinds, "fp32", device, log)
        for fname in entry["files"].values():
            os.replace(tmp / fname, root / fname)
        manifest["engines"][ENGINE] = entry
        write_manifest(manifest, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def identity_flownet(channels: Sequence[int]) -> nn.Module:
    """Zero flow and unit scale for every input: DFF that copies the key state (tests, smoke runs)."""

    class Identity(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.channels = tuple(channels)

        def forward(self, frame: Tensor, key: Tensor) -> tuple[Tensor, ...]:
            b, h, w, _ = frame.shape
            base = (frame.float().mean() - key.float().mean()) * 0.0  # keeps both inputs in the graph
            flows, scales = [], []
            for i, c in enumerate(self.channels):
                s = 4 * 2**i
                # made on the input's device: CPU constants added to a CUDA ``base`` would fail
                flows.append(base.new_zeros(b, 2, h // s, w // s) + base)
                scales.append(base.new_ones(b, c, h // s, w // s) + base)
            return (*flows, *scales)

    return Identity().eval()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.flownet_export",
        description="Add a FlowNet engine (frame, key_frame -> flow0..3, scale0..3) to an exported bundle "
        "for the runtime's --mode dff; checked against PyTorch like every engine.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (holds manifest.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="trained FlowNet (python -m export.train_flow)")
    src.add_argument("--identity", action="store_true", help="zero flow / unit scale (smoke tests only)")
    p.add_argument("--formats", default=None, help="comma list (default: the formats of the bundle's deq_cell)")
    p.add_argument("--device", default="cpu", help="device for the reference outputs and .pt2 compilation")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from export.onnx_export import ParityError
    from export.train_flow import load_flownet

    a = parse_args(argv)
    try:
        manifest = read_manifest(a.bundle)
        if a.identity:
            net: nn.Module = identity_flownet([int(s["shape"][1]) for s in manifest["state"]])
        else:
            if not a.checkpoint.is_file():
                raise ValueError(f"{a.checkpoint}: no such FlowNet checkpoint (train one: python -m export.train_flow)")
            net = load_flownet(a.checkpoint)[0]
        formats = [f.strip() for f in a.formats.split(",")] if a.formats else None
        entry = add_flownet(a.bundle, net, formats, a.device, log=lambda m: print(m, flush=True))
    except (ValueError, ManifestError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"added flownet ({', '.join(entry['files'].values())}) to {a.bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
