"""Persistent buffers of one stream group, allocated once and bound to the engines once.

The state z_0..z_3 lives in two sets (ping-pong A/B). Each set is ONE flat vector whose
per-scale views are what the engines bind, so solvers work on flat vectors and the cell writes
into them with no copy. Offsets are rounded up to 256 bytes (TensorRT's pointer alignment);
the gaps stay zero in both sets and never change a norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from runtime.bundle import Bundle, TensorSpec

ALIGN_BYTES = 256  # TensorRT wants 256-byte aligned tensor addresses

DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8, "int64": torch.int64}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


@dataclass(frozen=True)
class StateLayout:
    """Where each scale's tensor sits inside the flat state vector."""

    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    total: int
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_specs(cls, specs: tuple[TensorSpec, ...]) -> StateLayout:
        offsets, pos = [], 0
        dtype = torch_dtype(specs[0].dtype) if specs else torch.float32
        align = ALIGN_BYTES // torch.empty((), dtype=dtype).element_size()  # 64 fp32, 128 fp16 elements
        for s in specs:
            offsets.append(pos)
            pos += -(-s.numel // align) * align
        return cls(tuple(s.shape for s in specs), tuple(offsets), pos, dtype)

    @property
    def batch(self) -> int:
        return self.shapes[0][0]

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale (B, C, H, W) views of ``flat`` (contiguous, bindable by pointer)."""
        return [flat[o : o + math.prod(s)].view(s) for o, s in zip(self.offsets, self.shapes)]

    def sample_views(self, flat: torch.Tensor, b: int) -> list[torch.Tensor]:
        """The views of stream ``b`` (one batch row of every scale), to zero or warp one stream."""
        return [v[b] for v in self.views(flat)]


class StreamBuffers:
    """Every buffer the loop touches: upload, x, state sets A/B, class map, download.

    On CUDA the host side is pinned so uploads and downloads are asynchronous copies; on CPU
    the host and device buffers are the same tensors (no copy at all).
    """

    def __init__(self, bundle: Bundle, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        inj = bundle.engines["injection"]
        cell = bundle.engines["deq_cell"]
        head = bundle.engines[bundle.head_name]
        frame_spec, x_spec, out_spec = inj.inputs[0], cell.inputs[len(bundle.state)], head.outputs[0]
        self.layout = StateLayout.from_specs(bundle.state)
        self.frame = torch.zeros(frame_spec.shape, dtype=torch.uint8, device=device)
        self.frame_host = torch.zeros(frame_spec.shape, dtype=torch.uint8).pin_memory() if cuda else self.frame
        self.x = torch.zeros(x_spec.shape, dtype=torch_dtype(x_spec.dtype), device=device)
        self.z = [torch.zeros(self.layout.total, dtype=self.layout.dtype, device=device) for _ in range(2)]
        self.zviews = [self.layout.views(z) for z in self.z]
        # each stream's row of every scale, per set: made once, since each view is a torch call that lets another
        # thread take the GIL, and the loop would otherwise make them again every frame (issue #30)
        self.rows = [[self.layout.sample_views(z, b) for b in range(self.layout.batch)] for z in self.z]
        self.out = torch.zeros(out_spec.shape, dtype=torch_dtype(out_spec.dtype), device=device)
        self.out_host = torch.zeros(out_spec.shape, dtype=self.out.dtype).pin_memory() if cuda else self.out
        self.current = 0  # which state set holds the latest state

    @property
    def state(self) -> torch.Tensor:
        return self.z[self.current]

    def row_views(self, b: int) -> list[torch.Tensor]:
        """Stream ``b``'s per-scale views of the current state set (to zero or warp one stream)."""
        return self.rows[self.current][b]

    def set_index(self, z: torch.Tensor) -> int:
        """Which of the two sets ``z`` is (solvers hand back one of them)."""
        return 0 if z.data_ptr() == self.z[0].data_ptr() else 1

    def nbytes(self) -> int:
        ts = [self.frame, self.x, *self.z, self.out]
        if self.frame_host is not self.frame:
            ts += [self.frame_host, self.out_host]
        return sum(t.numel() * t.element_size() for t in ts)
