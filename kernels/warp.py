"""Public feature-warping API: CUDA kernels for CUDA tensors, the grid_sample reference for CPU tensors.

``warp(feat, disp, scale=None, out=None)``: ``out(p) = feat(p + disp(p)) [* scale]`` (DFF propagation).
``warp_interp(prev, d_prev, nxt, d_next, w_prev, w_next, mode, out=None)``: warp both key frames and fuse them in one
pass (weighted sum with ``w_prev = (n-p)/n``, ``w_next = p/n``; ``max``; ``avg``).

Tensors: features (N, C, H, W) float32 or float16, either contiguous NCHW or channels-last (``memory_format=
torch.channels_last``, i.e. NHWC in memory); displacements (N, 2, H, W) float32 contiguous, channel 0 = x, 1 = y,
in feature pixels; the scale field has the features' shape, dtype and layout. ``out=`` (same shape, dtype, layout as
the features) lets the runtime write into persistent buffers: the CUDA path then allocates nothing. Kernels run on
``torch.cuda.current_stream()``, so they order correctly with surrounding torch work and can be graph-captured.

Host cost: validating and packing a launch costs tens of microseconds of Python, as long as the kernel itself on a
fast GPU. A launch is therefore validated once per *signature* (every tensor's address, shape, strides, dtype and
device, the channel chunk and the scalar arguments: everything the checks and the packed arguments depend on) and its
packed, ready-to-launch form is kept (``_PLANS``); the runtime's persistent buffers hit that cache on every frame.
In-plane indices are 32-bit in the kernels, so planes of H*W >= 2^31 elements are refused.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

import torch

from kernels import loader, reference

MODES = reference.MODES
CUDA_DTYPES = {torch.float32: "f32", torch.float16: "f16"}
BLOCK = 256  # threads per block for every kernel (matches __launch_bounds__(256) in warp.cu)
NHWC_VEC = {torch.float32: 4, torch.float16: 8}  # elements per 16-byte vector load in the NHWC kernels
MAX_GRID = 1 << 20  # NHWC kernels grid-stride, so the grid can be capped
MAX_PLANE = 2**31 - 1  # the kernels index inside one H*W plane with 32-bit ints
BACKEND_ENV = "DEQSTREAM_KERNEL_BACKEND"  # a plan is bound to the loader backend it was prepared with
PLAN_CACHE_SIZE = 256  # launch signatures kept (a runtime uses a handful; interp adds one per frame position)


def _on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t`` takes the CUDA path (a function so the host-side tests can route CPU tensors through it)."""
    return t.is_cuda


def _stream_handle(device: torch.device) -> int:
    """The current torch stream of ``device`` as a cudaStream_t int (the kernels run on it)."""
    with torch.cuda.device(device):
        return torch.cuda.current_stream(device).cuda_stream


def default_cpt() -> int:
    """Channels per thread for the NCHW kernels (1 = one thread per element); DEQSTREAM_WARP_CPT overrides."""
    return int(os.environ.get("DEQSTREAM_WARP_CPT", "8"))


def layout_of(t: torch.Tensor, what: str) -> str:
    """ "nchw" for contiguous tensors, "nhwc" for channels-last ones; anything else is rejected (never copied)."""
    if t.dim() != 4:
        raise ValueError(f"{what} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    if t.is_contiguous():
        return "nchw"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    raise ValueError(
        f"{what} must be contiguous NCHW or channels-last NHWC (strides {t.stride()}); "
        "call .contiguous() or .contiguous(memory_format=torch.channels_last) once, outside the hot loop"
    )


def _check_disp(disp: torch.Tensor, feat: torch.Tensor, what: str) -> None:
    n, _, h, w = feat.shape
    if disp.dim() != 4 or tuple(disp.shape) != (n, 2, h, w):
        raise ValueError(f"{what} must have shape {(n, 2, h, w)} (x, y displacement), got {tuple(disp.shape)}")
    if disp.device != feat.device:
        raise ValueError(f"{what} is on {disp.device} but the features are on {feat.device}")
    if h < 2 or w < 2:
        raise ValueError(f"feature maps must be at least 2x2, got {h}x{w}")
    if _on_gpu(feat):
        if disp.dtype != torch.float32:
            raise TypeError(f"{what} must be float32 on CUDA, got {disp.dtype}")
        if not disp.is_contiguous():
            raise ValueError(f"{what} must be contiguous (N, 2, H, W)")


def _check_like(t: torch.Tensor, feat: torch.Tensor, layout: str, what: str) -> None:
    """``t`` must match the features in shape, dtype, device and memory layout."""
    if tuple(t.shape) != tuple(feat.shape) or t.dtype != feat.dtype or t.device != feat.device:
        raise ValueError(
            f"{what} must match the features: shape {tuple(feat.shape)} {feat.dtype} on {feat.device}, "
            f"got {tuple(t.shape)} {t.dtype} on {t.device}"
        )
    if _on_gpu(feat) and layout_of(t, what) != layout and feat.shape[1] > 1:
        raise ValueError(f"{what} must have the same memory layout as the features ({layout})")


def _check_feat(feat: torch.Tensor, what: str) -> str:
    layout = layout_of(feat, what)
    if _on_gpu(feat) and feat.dtype not in CUDA_DTYPES:
        raise TypeError(f"{what} must be float32 or float16 on CUDA, got {feat.dtype}")
    if _on_gpu(feat) and feat.shape[2] * feat.shape[3] > MAX_PLANE:
        h, w = feat.shape[2:]
        raise ValueError(
            f"{what}: an H*W plane of {h}x{w} = {h * w} elements is too large for the CUDA kernels' 32-bit "
            f"in-plane indexing (at most {MAX_PLANE}); split the feature map"
        )
    if not feat.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {feat.dtype}")
    return layout


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1 = a0 + a.numel() * a.element_size()
    b1 = b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


def _check_out(out: torch.Tensor, feat: torch.Tensor, layout: str, inputs: list[torch.Tensor]) -> None:
    _check_like(out, feat, layout, "out")
    if any(t is not None and _overlaps(out, t) for t in inputs):
        raise ValueError("out must not overlap the inputs (the kernels read neighbours of each output pixel)")


def _vec_width(layout: str, feat: torch.Tensor, tensors: list[torch.Tensor]) -> int:
    """Vector width for the NHWC kernels: 16-byte loads when C and every pointer allow it, else scalar."""
    if layout != "nhwc":
        return 1
    v = NHWC_VEC[feat.dtype]
    aligned = all(t.data_ptr() % (v * feat.element_size()) == 0 for t in tensors)
    return v if feat.shape[1] % v == 0 and aligned else 1


def _launch_geometry(layout: str, feat: torch.Tensor, cpt: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    n, c, h, w = feat.shape
    if layout == "nchw":
        grid = (-(-(h * w) // BLOCK), -(-c // cpt), n)
        if grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"too many channel chunks or images for one launch: grid {grid}")
        return grid, (BLOCK, 1, 1)
    warps = BLOCK // 32
    return (max(1, min(MAX_GRID, -(-(n * h * w) // warps))), 1, 1), (BLOCK, 1, 1)


def _kernel_name(op: str, layout: str, feat: torch.Tensor, vec: int) -> str:
    name = f"{op}_{layout}_{CUDA_DTYPES[feat.dtype]}"
    return name if layout == "nchw" else f"{name}_v{vec}"


def signature(op: str, tensors: list[torch.Tensor | None], cpt: int | None, scalars: tuple) -> tuple:
    """Everything a launch's validation and packed arguments depend on: equal signatures, equal launches."""
    parts: list[object] = [op, cpt if cpt is not None else default_cpt(), scalars, os.environ.get(BACKEND_ENV)]
    for t in tensors:
        parts.append(None if t is None else (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device))
    return tuple(parts)


_PLANS: OrderedDict[tuple, Callable[[int], None]] = OrderedDict()
stats = {"hits": 0, "misses": 0}  # read by tests and the bandwidth benchmark


def _cached(key: tuple) -> Callable[[int], None] | None:
    plan = _PLANS.get(key)
    if plan is not None:
        _PLANS.move_to_end(key)
        stats["hits"] += 1
    return plan


def _remember(key: tuple, plan: Callable[[int], None]) -> None:
    stats["misses"] += 1
    _PLANS[key] = plan
    if len(_PLANS) > PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)


def clear_plans() -> None:
    """Forget every cached launch (tests; a caller that frees and reuses addresses needs nothing of the kind)."""
    _PLANS.clear()
    stats.update(hits=0, misses=0)


def _prepare(
    op: str,
    layout: str,
    feat: torch.Tensor,
    tensors: list[torch.Tensor | None],
    extra: list[loader.Arg],
    cpt: int | None,
) -> Callable[[int], None]:
    """The packed launch: pointers of ``tensors`` (None -> null), then N, C, H, W, [cpt], then ``extra``."""
    n, c, h, w = feat.shape
    cpt = max(1, int(cpt or default_cpt()))
    vec = _vec_width(layout, feat, [t for t in tensors if t is not None and t.shape == feat.shape])
    grid, block = _launch_geometry(layout, feat, cpt)
    args = [loader.ptr(t.data_ptr() if t is not None else 0) for t in tensors]
    args += [loader.i32(n), loader.i32(c), loader.i32(h), loader.i32(w)]
    if layout == "nchw":
        args.append(loader.i32(cpt))
    args += extra
    return loader.prepare(_kernel_name(op, layout, feat, vec), grid, block, args, feat.device.index or 0)


def _fast(op: str, tensors: list[torch.Tensor | None], cpt: int | None, scalars: tuple) -> bool:
    """Launch a cached plan when this exact signature was validated before; False: take the checked path (also
    for anything that is not a tensor, which the checks then report clearly)."""
    feat = tensors[0]
    try:
        if not _on_gpu(feat):
            return False
        plan = _cached(signature(op, tensors, cpt, scalars))
    except (AttributeError, TypeError):
        return False
    if plan is None:
        return False
    plan(_stream_handle(feat.device))
    return True


def _launch(key: tuple, make: Callable[[], Callable[[int], None]], device: torch.device) -> None:
    plan = _cached(key)
    if plan is None:
        plan = make()
        _remember(key, plan)
    plan(_stream_handle(device))


def warp(
    feat: torch.Tensor,
    disp: torch.Tensor,
    scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    cpt: int | None = None,
) -> torch.Tensor:
    """Backward bilinear warp of ``feat`` by ``disp`` (zero padding per tap), optionally times ``scale``."""
    if out is not None and _fast("warp", [feat, disp, scale, out], cpt, ()):
        return out  # the runtime's case: persistent buffers, validated on first sight
    layout = _check_feat(feat, "feat")
    _check_disp(disp, feat, "disp")
    if scale is not None:
        _check_like(scale, feat, layout, "scale")
    if out is not None:
        _check_out(out, feat, layout, [feat, disp, scale])
    if not _on_gpu(feat):
        res = reference.warp(feat, disp, scale)
        if out is None:
            return res.contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
        return out.copy_(res)
    if out is None:
        out = torch.empty_like(feat)  # preserves the memory format
    tensors = [feat, disp, scale, out]
    _launch(signature("warp", tensors, cpt, ()), lambda: _prepare("warp", layout, feat, tensors, [], cpt), feat.device)
    return out


def warp_interp(
    prev: torch.Tensor,
    d_prev: torch.Tensor,
    nxt: torch.Tensor,
    d_next: torch.Tensor,
    w_prev: float = 0.5,
    w_next: float = 0.5,
    mode: str = "weighted",
    out: torch.Tensor | None = None,
    *,
    cpt: int | None = None,
) -> torch.Tensor:
    """Fuse the previous and next key frames' features warped to the current frame, in one kernel pass."""
    scalars = (float(w_prev), float(w_next), mode)
    if out is not None and _fast("interp", [prev, d_prev, nxt, d_next, out], cpt, scalars):
        return out
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layout = _check_feat(prev, "prev")
    _check_like(nxt, prev, layout, "nxt")
    _check_disp(d_prev, prev, "d_prev")
    _check_disp(d_next, prev, "d_next")
    if out is not None:
        _check_out(out, prev, layout, [prev, nxt, d_prev, d_next])
    if not _on_gpu(prev):
        res = reference.warp_interp(prev, d_prev, nxt, d_next, w_prev, w_next, mode)
        if out is None:
            return res.contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
        return out.copy_(res)
    if out is None:
        out = torch.empty_like(prev)
    code, wa, wb = {"weighted": (1, w_prev, w_next), "avg": (1, 0.5, 0.5), "max": (2, 0.0, 0.0)}[mode]
    extra = [loader.f32(wa), loader.f32(wb), loader.i32(code)]
    tensors = [prev, d_prev, nxt, d_next, out]
    key = signature("interp", tensors, cpt, scalars)
    _launch(key, lambda: _prepare("interp", layout, prev, tensors, extra, cpt), prev.device)
    return out
