"""Feature-propagation modes: carry the DEQ state from frame to frame by warping it, and run the
cell only where it pays (key frames), as Deep Feature Flow and Jain & Gonzalez do for CNN features.

Modes (``--mode``), all as :class:`runtime.modes.Policy` objects, so the one loop runs them:

* ``mv``: key frames (every ``interval``-th frame, plus codec I-frames) are solved with the DEQ;
  every other frame takes the previous frame's state warped by the codec motion vectors (no
  cell run) and goes straight to the head. Key frames warm-start, StreamDEQ style, from the
  MV-warped previous state with ``iters`` iterations (the chain's drift is corrected by the
  cell where the state is close to its fixed point already); the first frame and a frame after
  a reset start from zero with ``reset_iters`` (the CLI passes the manifest's f_thres).
  ``key_start="zero"`` solves every key frame from zero with ``reset_iters`` instead (DFF style).
* ``stream-mv``: every frame warps the previous state by the motion vectors, then runs ``iters``
  iterations (StreamDEQ with motion-compensated warm start). ``iters=0`` is a pure warp.
* ``dff``: key frames as in ``mv``; other frames run the FlowNet on (current, key) and take the
  key frame's state warped by ``flow_i`` and multiplied by ``scale_i`` (DFF, notes §1).
* ``mv-interp``: bidirectional interpolation between key frames with up to n frames of delay
  (Jain & Gonzalez). It needs the frames after the current one, so the loop holds frames back
  through :class:`runtime.interp.InterpPolicy`, which calls :func:`interpolate_segment` (also
  used, buffered, by ``benchmarks.propagation``) once the next key frame is solved.

Motion vectors arrive in ``FrameInfo.side["motion"]`` (a :class:`runtime.motion_vectors.MotionField`
at stride 4 of the source picture, filled by :mod:`runtime.mv_source`); :func:`mv_pyramid` turns it
into one displacement per state scale. Warps write into persistent buffers allocated on the
first frame (on CUDA the warp kernels then allocate nothing per frame).

Batches: each stream has its own policy, but one batched engine call serves all streams, so in
a batch a stream on a propagated frame still gets the iterations another stream's key frame
asks for (it is then refined like stream-mv; never less accurate, just not cheaper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from kernels import mvhost
from kernels.warp import warp, warp_interp
from runtime.policy import FrameInfo, Plan, Policy
from runtime.sources import Fitter

MV_STRIDE = 4  # the MV field's grid = the stride of z0
MIN_COVERAGE = 0.5  # a frame with less inter-predicted area than this may be a shot change ...
CUT_CHANGE = 20.0  # ... if its luma also changed by more than this (0..255; the reset monitor's change floor)
KEY_ZERO = "key frame (--key-start zero)"
PROPAGATION_MODES = ("mv", "stream-mv", "dff")


# ----------------------------------------------------------------------------- motion -> pyramid
def _lane_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The elementwise sum of ``parts`` in numpy's own order for a reduction along an axis of that length:
    sequential below 8 terms, else 8 running lanes added as a tree (numpy's pairwise sum, one block)."""
    if len(parts) < 8:
        acc = parts[0].copy()
        for p in parts[1:]:
            acc += p
        return acc
    whole = len(parts) - len(parts) % 8
    lanes = [parts[j].copy() for j in range(8)]
    for i in range(8, whole, 8):
        for j in range(8):
            lanes[j] += parts[i + j]
    acc = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for p in parts[whole:]:
        acc += p
    return acc


def _pool(a: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Sum-pool the last two axes by ``f`` (crop to whole cells), then fit ``shape`` exactly.

    Separably, columns then rows, from strided views: the same float32 sums, in the same order, as
    ``a.reshape(..., h, f, w, f).sum(axis=(-3, -1))`` on grids of a few cells or more (bit for bit with the pinned
    numpy; the pyramid's fields are unchanged), 4x faster on the field thread's four scales, where numpy's
    reduction over two strided axes was the cost (issue #30)."""
    h, w = shape
    a = a[..., : h * f, : w * f]
    if a.shape[-2] != h * f or a.shape[-1] != w * f:  # grid smaller than asked: pad with zeros
        pad = [(0, 0)] * (a.ndim - 2) + [(0, h * f - a.shape[-2]), (0, w * f - a.shape[-1])]
        a = np.pad(a, pad)
    if f > 128:  # beyond one pairwise block: numpy's own reduction
        return a.reshape(*a.shape[:-2], h, f, w, f).sum(axis=(-3, -1))
    cols = _lane_sum([a[..., dx::f] for dx in range(f)])
    acc = cols[..., 0::f, :].copy()
    for dy in range(1, f):
        acc += cols[..., dy::f, :]
    return acc


def _resample(disp: np.ndarray, weight: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Move a field onto the state's grid when the two grids differ (the decode thread already put it in the
    engine picture's geometry): the Fitter's coverage-weighted resampling, one grid cell per pixel."""
    return Fitter(tuple(weight.shape), shape).fit_field(disp, weight, 1)


def mv_pyramid(disp: np.ndarray, coverage: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Stride-4 MV field (2, h, w) in stride-4 feature px -> one (2, h_i, w_i) field per state scale.

    Scale i (stride 4 * 2^i) gets the coverage-weighted mean of the 2^i x 2^i cells it covers,
    divided by 2^i (its pixels are 2^i times larger); cells no inter block covers stay 0.
    """
    disp = np.asarray(disp, np.float32)
    cov = np.asarray(coverage, np.float32)
    if tuple(disp.shape[1:]) != tuple(shapes[0]):
        disp, cov = _resample(disp, cov, tuple(shapes[0]))
    if mvhost.available():  # the same float32 sums in C (kernels/mvhost.c: mvh_pyramid), bit for bit
        got = mvhost.pyramid(disp, cov, [(int(h), int(w)) for h, w in shapes])
        if got is not None:
            return got
    return _pyramid_numpy(disp, cov, shapes)


def _pyramid_numpy(disp: np.ndarray, cov: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """:func:`mv_pyramid` in numpy, for a field on the first scale's grid: the C twin's reference and fallback."""
    out = [disp * (cov > 0)]
    sums = np.concatenate([disp * cov, cov[None]])  # pooled together: one pass per scale
    for i, shape in enumerate(shapes[1:], start=1):
        f = 2**i
        pooled = _pool(sums, f, shape)
        num, den = pooled[:2], pooled[2]
        out.append(np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32) / f)
    return out


def pyramid_step(shapes: Sequence[Sequence[int]]) -> Callable[[Any], Any]:
    """A step for the field thread (``Prefetcher``'s ``field_step``): the fitted field's pyramid for the state's
    ``shapes``, made there. Why: pooling four scales cost the loop thread of the vector modes about as much as
    everything else it does per propagated frame (issue #30); on the field thread it overlaps the engines."""
    want = [(int(h), int(w)) for h, w in shapes]

    def step(m: Any) -> Any:
        if m is not None and not m.is_key:
            m.pyramid = (want, mv_pyramid(m.disp, m.coverage, want))
        return m

    return step


def pyramid_of(m: Any, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """``m``'s per-scale fields for ``shapes``: the field thread's when it made them for these shapes, else now."""
    want = [(int(h), int(w)) for h, w in shapes]
    made = getattr(m, "pyramid", None)
    if made is not None and made[0] == want:
        return made[1]
    return mv_pyramid(m.disp, m.coverage, want)


def _motion(info: FrameInfo) -> Any:
    return info.side.get("motion") if info.side else None


def has_motion(info: FrameInfo) -> bool:
    """The frame carries usable 'from the previous frame' vectors (P frame, not multi-frame)."""
    m = _motion(info)
    return m is not None and not m.is_key and not getattr(m, "multi_frame", False)


# ----------------------------------------------------------------------------- warping buffers
class StateWarper:
    """Persistent displacement and scratch buffers for warping one stream's state (all scales).

    Allocated on the first call from the views' shapes, dtype and device, then reused: the warp
    writes into scratch (the kernels never read and write one buffer) and is copied back.
    """

    def __init__(self) -> None:
        self.disp: list[Tensor] = []
        self.scratch: list[Tensor] = []
        self.host: list[Tensor] = []  # pinned staging of numpy fields on CUDA (a pageable copy is synchronous)
        self.copied: Any = None  # event after the last staged copies: the staging is free again once it passed
        self.loaded: list[Tensor] = []  # what the last load gave the warp: the buffers, or the fields themselves

    def ensure(self, views: Sequence[Tensor]) -> None:
        if self.disp and [tuple(d.shape[2:]) for d in self.disp] == [tuple(v.shape[1:]) for v in views]:
            return
        self.disp = [torch.zeros((1, 2, *v.shape[1:]), dtype=torch.float32, device=v.device) for v in views]
        self.scratch = [torch.empty((1, *v.shape), dtype=v.dtype, device=v.device) for v in views]
        cuda = bool(views) and views[0].device.type == "cuda"
        self.host = (
            [torch.empty((2, *v.shape[1:]), dtype=torch.float32, pin_memory=True) for v in views] if cuda else []
        )
        self.copied = torch.cuda.Event() if cuda else None

    def load(self, fields: Sequence[np.ndarray | Tensor], sign: float = 1.0) -> list[Tensor]:
        """Per-scale fields (2, h, w) as the warp's displacements: copied into the device buffers (numpy through
        pinned staging); on a CPU device a float32 numpy field is read where it lies (no copy: fields are never
        written once made, and each copy was three more torch calls per scale on the loop thread, issue #30)."""
        if self.copied is not None:
            self.copied.synchronize()  # the previous load's copies have left the staging buffers
        if sign == 1.0 and not self.host and all(_borrowable(f, buf) for buf, f in zip(self.disp, fields)):
            self.loaded = [torch.from_numpy(f.reshape(buf.shape)) for buf, f in zip(self.disp, fields)]
            return self.loaded
        for i, (buf, f) in enumerate(zip(self.disp, fields)):
            if self.host and isinstance(f, np.ndarray):
                np.copyto(self.host[i].numpy(), f.reshape(self.host[i].shape), casting="unsafe")
                buf[0].copy_(self.host[i], non_blocking=True)
            elif isinstance(f, np.ndarray) and buf.device.type == "cpu":  # any dtype, strides, read-only or not
                np.copyto(buf.numpy()[0], f.reshape(buf.shape[1:]), casting="unsafe")
            else:
                src = torch.from_numpy(np.ascontiguousarray(f)) if isinstance(f, np.ndarray) else f
                buf[0].copy_(src.reshape(buf.shape[1:]))
            if sign != 1.0:
                buf.mul_(sign)
        if self.copied is not None:
            self.copied.record()
        self.loaded = self.disp
        return self.disp

    def warp_(self, views: Sequence[Tensor], disp: Sequence[Tensor] | None = None) -> None:
        """views <- views warped by ``disp`` (default: the loaded buffers), in place."""
        for v, d, s in zip(views, disp or self.loaded, self.scratch):
            warp(v[None], d, out=s)
            v.copy_(s[0])


def _borrowable(f: Any, buf: Tensor) -> bool:
    """A field the CPU warp can read in place: float32 numpy, C-contiguous, writable, of the buffer's size."""
    return (
        isinstance(f, np.ndarray)
        and buf.device.type == "cpu"
        and f.dtype == np.float32
        and f.flags.c_contiguous
        and f.flags.writeable  # torch warns on a read-only array
        and f.size == buf.numel()
    )


def motion_warp_hook(warper: StateWarper) -> Callable[[list[Tensor], FrameInfo], None]:
    """Warp hook: the previous frame's state -> the current frame by its codec motion vectors."""

    def hook(views: list[Tensor], info: FrameInfo) -> None:
        if not has_motion(info):
            return  # I-frame or no vectors: nothing moved that the codec could tell us
        warper.ensure(views)
        m = _motion(info)
        warper.load(pyramid_of(m, [tuple(v.shape[1:]) for v in views]))
        warper.warp_(views)

    return hook


# ----------------------------------------------------------------------------- MV policies
def _why(info: FrameInfo, has_state: bool, kind: str) -> str:
    """The cause of a from-zero start, logged in its record ("" for the first frame only)."""
    if not has_state:
        return "" if info.index == 0 else "no state"
    return "shot change (intra-coded frame)" if kind == "cut" else KEY_ZERO


def is_cut(info: FrameInfo, min_coverage: float = MIN_COVERAGE, min_change: float = CUT_CHANGE) -> bool:
    """A P or B frame the encoder coded mostly intra whose pixels changed a lot: a shot change.

    With ``scenecut=0`` x264 keeps such frames as P frames, but their blocks are intra, so the
    inter-block coverage (of either reference list: ``MotionField.inter``) collapses (about 0.0 at a
    cut vs > 0.9 on ordinary synthetic frames). Encoders also code fast motion and uncovered areas
    intra (on real footage such frames changed by 2.6-21 of 255 against 52-85 at the cuts), so a cut
    must also change the luma by more than ``min_change`` (when the field knows the change). Tuned on
    the validation clips (seeds 900000-19, 128 x 256, x264 bframes=3 ref=3 scenecut=0): the 10 cuts
    changed by 21.2-41.7, the 570 other frames by at most 11.3, and the 4 of them coded mostly intra
    by 2.1-5.6. A cut coded as a B picture predicted from the next (new-scene) frame keeps its inter
    coverage (4 of the 10); the loop's pixel rule (``ResetMonitor.before``) sees those."""
    m = _motion(info)
    if m is None or m.is_key:
        return False
    inter = getattr(m, "inter", None)
    if (float(np.mean(m.coverage)) if inter is None else inter) >= min_coverage:
        return False
    change = getattr(m, "change", None)
    return change is None or change > min_change


class _KeySchedule:
    """Key frames: every ``interval``-th frame since the last key, codec I-frames, shot changes
    (intra-coded P frames), frames without usable vectors (mv), and frames with no state."""

    def __init__(self, interval: int, codec_keys: bool = True, min_coverage: float = MIN_COVERAGE) -> None:
        if interval < 1:
            raise ValueError(f"key interval must be >= 1, got {interval}")
        self.interval, self.codec_keys, self.min_coverage = interval, codec_keys, min_coverage
        self.since = 0

    def kind(self, info: FrameInfo, has_state: bool, need_motion: bool) -> str:
        """ "" (propagate), "key" (solve, warm start allowed) or "cut" (solve from zero)."""
        m = _motion(info)
        if not has_state or is_cut(info, self.min_coverage):
            kind = "cut"
        elif (
            self.since + 1 >= self.interval
            or (self.codec_keys and m is not None and m.is_key)
            or (need_motion and not has_motion(info))
        ):
            kind = "key"
        else:
            kind = ""
        self.since = self.since + 1 if not kind else 0
        return kind


class MVPolicy(Policy):
    """``--mode mv``: key frames solved, the frames between warped by codec motion vectors."""

    name = "mv"

    def __init__(self, interval: int, iters: int, reset_iters: int | None = None, key_start: str = "previous") -> None:
        if key_start not in ("previous", "zero"):
            raise ValueError(f"key_start must be previous or zero, got {key_start!r}")
        self.keys = _KeySchedule(interval)
        self.iters, self.reset_iters, self.key_start = iters, reset_iters or iters, key_start
        self.warper = StateWarper()
        self.hook = motion_warp_hook(self.warper)

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        kind = self.keys.kind(info, has_state, need_motion=True)
        if not kind:
            return Plan(iters=0, start="previous", run_cell=False, warp=self.hook, pixels=False)
        if kind == "cut" or self.key_start == "zero":
            return Plan(iters=self.reset_iters, start="zero", reason=_why(info, has_state, kind))
        return Plan(iters=self.iters, start="previous", warp=self.hook)

    @property
    def max_iters(self) -> int:
        return max(self.iters, self.reset_iters)


class StreamMVPolicy(Policy):
    """``--mode stream-mv``: StreamDEQ whose warm start is the MV-warped previous state."""

    name = "stream-mv"

    def __init__(self, iters: int, reset_iters: int | None = None) -> None:
        self.iters, self.reset_iters = iters, reset_iters or max(iters, 1)
        self.warper = StateWarper()
        self.hook = motion_warp_hook(self.warper)

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        if not has_state:
            return Plan(iters=self.reset_iters, start="zero", reason="" if info.index == 0 else "no state")
        return Plan(iters=self.iters, start="previous", run_cell=self.iters > 0, warp=self.hook)

    @property
    def max_iters(self) -> int:
        return max(self.iters, self.reset_iters)


# ----------------------------------------------------------------------------- DFF
class FlowProvider(Protocol):
    """Where DFF's flow comes from: the bundle's flownet engine, or PyTorch in benchmarks."""

    def remember_key(self, info: FrameInfo) -> None:
        """The current frame becomes the key frame."""

    def flows(self, info: FrameInfo) -> tuple[list[Tensor], list[Tensor]]:
        """(flow_i (1, 2, h_i, w_i), scale_i (1, C_i, h_i, w_i)) from the current frame to the key frame."""
        ...


class EngineFlow:
    """The bundle's ``flownet`` engine on the pipeline's frame buffer and a persistent key-frame
    buffer; outputs in persistent buffers. One engine call per batched frame serves every stream."""

    def __init__(self, pipeline: Any, b: int) -> None:
        from runtime.backends import load_runner
        from runtime.buffers import torch_dtype
        from runtime.errors import EngineError

        bundle = pipeline.bundle
        if "flownet" not in bundle.engines:
            raise EngineError(
                f"--mode dff needs a flownet engine in the bundle ({bundle.root}); "
                "export one with `python -m export.flownet_export`"
            )
        spec = bundle.engines["flownet"]
        self.pipe, self.b = pipeline, b
        shared = getattr(pipeline, "_flownet", None)
        if shared is None:  # the first stream's provider sets up the engine for the group
            runner = load_runner(spec, pipeline.device, threads=0, stream=pipeline.stream)
            key = torch.zeros_like(pipeline.buf.frame)
            outs = {
                t.name: torch.zeros(t.shape, dtype=torch_dtype(t.dtype), device=pipeline.device) for t in spec.outputs
            }
            runner.bind("frame", pipeline.buf.frame)
            runner.bind("key_frame", key)
            for name, t in outs.items():
                runner.bind(name, t)
            shared = {"runner": runner, "key": key, "outs": outs, "ran": -1}
            pipeline._flownet = shared
        self.shared = shared
        n = len(bundle.state)
        for i in range(n):
            if f"flow{i}" not in shared["outs"] or f"scale{i}" not in shared["outs"]:
                raise EngineError(f"{spec.path.name}: flownet must output flow0..flow{n - 1} and scale0..scale{n - 1}")

    def remember_key(self, info: FrameInfo) -> None:
        self.shared["key"][self.b].copy_(self.pipe.buf.frame[self.b])

    def flows(self, info: FrameInfo) -> tuple[list[Tensor], list[Tensor]]:
        sh = self.shared
        if sh["ran"] != self.pipe.calls:  # once per batched frame
            sh["runner"].run(self.pipe.stream)
            sh["ran"] = self.pipe.calls
        n = len(self.pipe.bundle.state)
        outs, b = sh["outs"], self.b
        return [outs[f"flow{i}"][b : b + 1] for i in range(n)], [outs[f"scale{i}"][b : b + 1] for i in range(n)]


class TorchFlow:
    """A PyTorch FlowNetS as a FlowProvider; frames come in ``info.side["frame"]`` (H, W, 3) uint8."""

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.net, self.device = net.eval().to(device), torch.device(device)
        self.key: Tensor | None = None

    def _frame(self, info: FrameInfo) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(info.side["frame"]))[None].to(self.device)

    def remember_key(self, info: FrameInfo) -> None:
        self.key = self._frame(info)

    @torch.no_grad()
    def flows(self, info: FrameInfo) -> tuple[list[Tensor], list[Tensor]]:
        out = self.net(self._frame(info), self.key)
        n = len(out) // 2
        return [o.float().contiguous() for o in out[:n]], [o.contiguous() for o in out[n:]]


class DFFPolicy(Policy):
    """``--mode dff``: key frames solved; other frames = key state warped by FlowNet flow x scale.

    The key state is copied into persistent buffers on the first frame after the key frame
    (the current set holds it then); a provider is given (benchmarks) or attached from the
    pipeline's bundle (``attach``, called by the loop once the engines are loaded).
    """

    name = "dff"

    def __init__(
        self,
        interval: int,
        iters: int,
        reset_iters: int | None = None,
        key_start: str = "previous",
        provider: FlowProvider | None = None,
    ) -> None:
        if key_start not in ("previous", "zero"):
            raise ValueError(f"key_start must be previous or zero, got {key_start!r}")
        self.keys = _KeySchedule(interval, codec_keys=True)
        self.iters, self.reset_iters, self.key_start = iters, reset_iters or iters, key_start
        self.provider = provider
        self.key_state: list[Tensor] = []
        self.pending = False  # a key frame ran; snapshot its state on the next frame

    def attach(self, pipeline: Any, b: int) -> None:
        if self.provider is None:
            self.provider = EngineFlow(pipeline, b)

    def _on_key(self, views: list[Tensor], info: FrameInfo) -> None:
        assert self.provider is not None, "DFFPolicy has no flow provider (attach() was not called)"
        self.provider.remember_key(info)
        self.pending = True

    def _propagate(self, views: list[Tensor], info: FrameInfo) -> None:
        assert self.provider is not None, "DFFPolicy has no flow provider (attach() was not called)"
        if self.pending or not self.key_state:
            if [tuple(k.shape) for k in self.key_state] != [tuple(v.shape) for v in views]:
                self.key_state = [torch.empty_like(v) for v in views]
            for k, v in zip(self.key_state, views):
                k.copy_(v)
            self.pending = False
        flows, scales = self.provider.flows(info)
        for k, v, d, s in zip(self.key_state, views, flows, scales):
            warp(k[None], d, s, out=v[None])

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        kind = self.keys.kind(info, has_state, need_motion=False)
        if not kind:
            return Plan(iters=0, start="previous", run_cell=False, warp=self._propagate)
        if kind == "cut" or self.key_start == "zero":
            return Plan(iters=self.reset_iters, start="zero", warp=self._on_key, reason=_why(info, has_state, kind))
        return Plan(iters=self.iters, start="previous", warp=self._on_key)

    @property
    def max_iters(self) -> int:
        return max(self.iters, self.reset_iters)


# ----------------------------------------------------------------------------- mv-interp
def interp_weights(p: int, n: int) -> tuple[float, float]:
    """Jain & Gonzalez: frame p of n after key k gets (n-p)/n of key k's chain and p/n of key k+n's."""
    if not 0 <= p <= n or n < 1:
        raise ValueError(f"need 0 <= p <= n and n >= 1, got p={p}, n={n}")
    return (n - p) / n, p / n


def interpolate_segment(
    key_a: Sequence[Tensor], key_b: Sequence[Tensor], motion: Sequence[Sequence[np.ndarray | Tensor]]
) -> list[list[Tensor]]:
    """States of the frames between two key frames by bidirectional MV propagation.

    ``key_a``/``key_b``: per-scale states (1, C, h, w) of key k and key k+n. ``motion[t]`` for
    t = 1..n (index 0 unused): the per-scale MV pyramid of frame k+t (its 'from frame k+t-1'
    displacement). Forward chain a_t = warp(a_{t-1}, d_t); backward chain b_{t-1} = warp(b_t, -d_t)
    (the inverse motion, sampled at the destination: exact for translations); frame t =
    (n-t)/n * a_t + t/n * b_t, fused in one ``warp_interp`` pass per scale. Returns n+1 states
    (index 0 = key_a, index n = key_b, unchanged).
    """
    n = len(motion) - 1
    if n < 1:
        raise ValueError("need at least one frame after the first key frame")
    disp = [[_as_disp(f, k) for f, k in zip(motion[t], key_a)] for t in range(1, n + 1)]  # disp[t-1] = d_t
    back: list[list[Tensor]] = [list(key_b)]  # b_n, b_{n-1}, ..., b_1
    for t in range(n, 1, -1):
        back.append([warp(s, -d) for s, d in zip(back[-1], disp[t - 1])])
    back.reverse()  # back[t-1] = b_t
    out, fwd = [list(key_a)], list(key_a)
    for t in range(1, n):
        wa, wb = interp_weights(t, n)
        nxt = back[t]  # b_{t+1}: warped by -d_{t+1} lands on frame t
        fused = [warp_interp(a, d, b, -dn, wa, wb) for a, d, b, dn in zip(fwd, disp[t - 1], nxt, disp[t])]
        fwd = [warp(a, d) for a, d in zip(fwd, disp[t - 1])]
        out.append(fused)
    out.append(list(key_b))
    return out


def _as_disp(f: np.ndarray | Tensor, like: Tensor) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(f)) if isinstance(f, np.ndarray) else f
    return t.to(device=like.device, dtype=torch.float32).reshape(1, 2, *like.shape[2:]).contiguous()


# ----------------------------------------------------------------------------- factory
def make_propagation_policy(
    mode: str, iters: int, interval: int, reset_iters: int | None = None, key_start: str = "previous"
) -> Policy:
    """The CLI's propagation ``--mode`` -> policy (dff gets its flownet engine via ``attach``)."""
    if mode == "mv":
        return MVPolicy(interval, iters, reset_iters, key_start)
    if mode == "stream-mv":
        return StreamMVPolicy(iters, reset_iters)
    if mode == "dff":
        return DFFPolicy(interval, iters, reset_iters, key_start)
    raise ValueError(f"unknown propagation mode {mode!r}; choose one of {', '.join(PROPAGATION_MODES)}")
