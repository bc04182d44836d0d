"""The motion-vector field's per-frame host work in C (``kernels/mvhost.c``), loaded with ctypes.

Why: building the field from the codec's side data with numpy cost 1-2.5x the codec's own decode per frame, almost
all of it numpy's per-call overhead on arrays of a few hundred blocks (issue #30). The C twins of
``ReferenceResolver``'s matching and backward-vector rules, of the unit-grid rasteriser and of ``Fitter.fit_field``
do the same arithmetic in the same order, so the fields are bit-identical (``tests/kernels/test_mvhost.py``).

The library is built by ``python -m kernels.build`` (``make kernels``) with the system C compiler into
``kernels/build/libmvhost.so``. Where it is missing or cannot load (no compiler, another platform), or with
``DEQSTREAM_MV_HOST=numpy``, :func:`available` is False and the callers keep their numpy code: nothing else changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = Path(__file__).resolve().parent / "mvhost.c"
LIB = SOURCE.parent / "build" / "libmvhost.so"
FIELDS = ("source", "w", "h", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale")
_TYPES = {"source": "i4", "w": "u1", "h": "u1", "dst_x": "i2", "dst_y": "i2", "motion_x": "i4", "motion_y": "i4",
          "motion_scale": "u2"}  # fmt: skip
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "mvh_resolve": (_I, [_P, _I, _I, _P, _P, _I, _I, _I, _P, _I, _I, _I, _I, _P, _P, _P, _I, _I, _P, _P, _P]),
    "mvh_grid_unit": (_I, [_P, _P, _I, _I, _P, _P, _I, _I, _I, _I, _P, _P]),
    "mvh_absdiff_mean": (_D, [_P, _I, _P, _I, _I, _I, _I]),
    "mvh_rle8": (_I, [_P, _I, _P]),
    "mvh_resize_rgb": (_I, [_P, _I, _I, _I, _P, _I, _I, _I]),
    "mvh_fit_field": (_I, [_P, _P, _P, _I, _P, _P, _P, _I, _P, _P, _I, _I, _D, _D, _P]),
    "mvh_pyramid": (_I, [_P, _P, _I, _I, _P, _I, _P]),
}
# Calls of a few microseconds, made with the GIL held (ctypes.PyDLL): releasing it for them let a thread busy in
# Python keep it for up to the switch interval before the caller got it back.
_HELD = {"mvh_absdiff_mean": _SIGNATURES["mvh_absdiff_mean"]}
_state: dict[str, Any] = {}


def _load() -> Any:
    """The loaded library, or None (missing, unloadable, or switched off by DEQSTREAM_MV_HOST=numpy)."""
    if "lib" not in _state:
        on = os.environ.get("DEQSTREAM_MV_HOST", "c") != "numpy" and LIB.is_file() and _current()
        _state["lib"] = _open(ctypes.CDLL, _SIGNATURES) if on else None
    return _state["lib"]


def _open(kind: Any, table: dict[str, Any]) -> Any:
    """The library through ``kind`` (``ctypes.CDLL``: calls release the GIL; ``PyDLL``: they hold it) with the
    signatures of ``table``, or None where it does not load."""
    try:
        lib = kind(str(LIB))
        for name, (res, args) in table.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        return lib
    except (OSError, AttributeError):
        return None


def _current() -> bool:
    """The library was built from this ``mvhost.c`` (its build stamp says so): a stale one could mismatch the
    signatures above, so it is not loaded (``make kernels`` rebuilds it)."""
    stamp = LIB.with_name(LIB.name + ".json")
    try:
        built = json.loads(stamp.read_text()).get("source_sha256")
        return built == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False


def _load_held() -> Any:
    """The same library with the GIL held through its calls (``_HELD``), or None where it does not load."""
    if "held" not in _state:
        _state["held"] = _open(ctypes.PyDLL, _HELD) if _load() is not None else None
    return _state["held"]


def available() -> bool:
    """True when the C library is built and loads here (else the callers' numpy code runs)."""
    return _load() is not None


def reset() -> None:
    """Forget the loaded state (tests switch DEQSTREAM_MV_HOST between runs)."""
    _state.clear()


def _offsets(dtype: np.dtype) -> np.ndarray | None:
    """The byte offsets of the fields the C code reads, if ``dtype`` is FFmpeg's AVMotionVector layout."""
    key = ("off", dtype)
    if key not in _state:
        ok = dtype.fields is not None and all(
            f in dtype.fields and dtype.fields[f][0].str.endswith(_TYPES[f]) for f in FIELDS
        )
        _state[key] = np.array([dtype.fields[f][1] for f in FIELDS], np.int64) if ok else None
    return _state[key]


def usable(records: np.ndarray | Picked) -> bool:
    """The C path can read these records (the library loads and they are contiguous AVMotionVector records)."""
    if isinstance(records, Picked):
        return available()
    return available() and records.flags.c_contiguous and _offsets(records.dtype) is not None


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def resolve(
    vectors: np.ndarray,
    y: np.ndarray,
    ring: np.ndarray | None,
    last: int,
    n_cand: int,
    span: int,
    prev: tuple[np.ndarray, np.ndarray] | None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """One frame's vectors resolved to "from the previous frame" (``ReferenceResolver``'s rules): the indices of the
    kept records (forward ones first, then backward-only ones), their motion (2, n) px, the inter fraction and the
    mean span of the kept forward vectors (None when there are none). ``allowed`` (n_cand uint8): the spans that
    may be references (``ReferenceResolver._allowed``), None for all."""
    n = len(vectors)
    buf = np.empty(3 * n + 3, np.float64)  # idx (n, as int64), motion (2, n), facts (3): one address to fetch
    p = buf.ctypes.data
    h, w = y.shape
    if y.strides[1] != 1:
        y = np.ascontiguousarray(y)
    window = ring.shape[0] if ring is not None else 1
    pd, pc = (np.ascontiguousarray(prev[0]), np.ascontiguousarray(prev[1])) if prev is not None else (None, None)
    puh, puw = pc.shape if pc is not None else (0, 0)
    got = _load().mvh_resolve(
        vectors.ctypes.data, n, vectors.dtype.itemsize, _offsets(vectors.dtype).ctypes.data, y.ctypes.data, h, w,
        y.strides[0], _ptr(ring), window, last, n_cand if ring is not None else 0, span, _ptr(allowed), _ptr(pd),
        _ptr(pc), puh, puw, p, p + 8 * n, p + 24 * n,
    )  # fmt: skip
    if got < 0:
        raise MemoryError("kernels.mvhost: out of memory resolving motion vectors")
    idx, motion, facts = buf[:got].view(np.int64), buf[n : n + 2 * got].reshape(2, got), buf[3 * n :]
    mean_span = facts[1] / facts[2] if facts[2] > 0 else None
    return idx, motion, float(facts[0]), mean_span


class Picked:
    """Some of a frame's motion-vector records, by index (numpy's fancy indexing of structured records costs more than
    the whole C field): what :func:`resolve` keeps, read as they are by :func:`grid_unit`."""

    def __init__(self, records: np.ndarray, idx: np.ndarray) -> None:
        self.records, self.idx = records, idx

    def __len__(self) -> int:
        return len(self.idx)

    def array(self) -> np.ndarray:
        """The picked records as a structured array (for the numpy code paths)."""
        return self.records[self.idx]


def grid_unit(
    blocks: np.ndarray | Picked, motion: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``grid_blocks(blocks, motion, height, width, UNIT)``: disp (2, uh, uw) float32 in unit cells, coverage."""
    records, idx = (blocks.records, blocks.idx) if isinstance(blocks, Picked) else (blocks, None)
    uh, uw = -(-height // 4), -(-width // 4)
    buf = np.empty((3, uh, uw), np.float32)  # disp (2, uh, uw), then coverage
    p = buf.ctypes.data
    motion = np.ascontiguousarray(motion, np.float64)
    got = _load().mvh_grid_unit(
        records.ctypes.data, _ptr(idx), len(blocks), records.dtype.itemsize, _offsets(records.dtype).ctypes.data,
        motion.ctypes.data, uh, uw, uh, uw, p, p + 8 * uh * uw,
    )  # fmt: skip
    if got < 0:
        raise MemoryError("kernels.mvhost: out of memory rasterising motion vectors")
    return buf[:2], buf[2]


class FieldTaps:
    """``Fitter``'s separable bilinear taps for one source grid, kept with their addresses (fetched once)."""

    def __init__(self, rows: list[Any], cols: list[Any], row_in: np.ndarray, col_in: np.ndarray) -> None:
        self.keep = [
            np.ascontiguousarray(np.stack([a for a, _ in rows]), np.float64),
            np.ascontiguousarray(np.stack([i for _, i in rows]), np.int64),
            np.ascontiguousarray(row_in, np.uint8),
            np.ascontiguousarray(np.stack([a for a, _ in cols]), np.float64),
            np.ascontiguousarray(np.stack([i for _, i in cols]), np.int64),
            np.ascontiguousarray(col_in, np.float64),  # 1.0 / 0.0: a factor in the C code's vectorised loop
        ]
        self.gh, self.gw = len(row_in), len(col_in)
        self.ptrs = [a.ctypes.data for a in self.keep]


def fit_field(
    taps: FieldTaps, disp: np.ndarray, weight: np.ndarray, sx: float, sy: float
) -> tuple[np.ndarray, np.ndarray]:
    """``Fitter.fit_field``: the engine grid's displacement (2, gh, gw) float32 and weight (gh, gw) float32."""
    d = np.ascontiguousarray(disp, np.float32)
    wt = np.ascontiguousarray(weight, np.float32)
    gh, gw = taps.gh, taps.gw
    buf = np.empty((3, gh, gw), np.float32)
    r, rc, rin, c, cc, cin = taps.ptrs
    got = _load().mvh_fit_field(
        r, rc, rin, gh, c, cc, cin, gw, d.ctypes.data, wt.ctypes.data, wt.shape[-1], wt.size, sx, sy, buf.ctypes.data
    )
    if got < 0:
        raise MemoryError("kernels.mvhost: out of memory fitting the motion field")
    return buf[:2], buf[2]


def pyramid(disp: np.ndarray, coverage: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """``runtime.propagation.mv_pyramid`` for a field already on the first scale's grid: one (2, h_i, w_i) float32
    field per state scale, views of one buffer; None where the library is not loaded, a scale's cell is wider than
    128 (numpy's own reduction there) or the shapes disagree (the field, its coverage and the first scale must be
    one grid)."""
    lib = _load()
    d = np.ascontiguousarray(disp, np.float32)
    c = np.ascontiguousarray(coverage, np.float32)
    if lib is None or not shapes or d.shape != (2, *c.shape) or tuple(shapes[0]) != c.shape:
        return None  # the C code sizes scale 0 by the coverage: a mismatch would write past the buffer
    sizes = [2 * h * w for h, w in shapes]
    out = np.empty(sum(sizes), np.float32)
    table = np.array(shapes, np.int64)
    rc = lib.mvh_pyramid(d.ctypes.data, c.ctypes.data, *c.shape, table.ctypes.data, len(shapes), out.ctypes.data)
    if rc < 0:
        raise MemoryError("kernels.mvhost: out of memory pooling the motion field")
    if rc:
        return None
    ends = np.cumsum(sizes)
    return [out[e - n : e].reshape(2, h, w) for e, n, (h, w) in zip(ends, sizes, shapes)]


def change(prev: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute luma difference at every 8th pixel of every 8th row (``motion_vectors._change``)."""
    if prev.strides[1] != 1:
        prev = np.ascontiguousarray(prev)
    if y.strides[1] != 1:
        y = np.ascontiguousarray(y)
    h, w = y.shape
    return float(_load().mvh_absdiff_mean(prev.ctypes.data, prev.strides[0], y.ctypes.data, y.strides[0], h, w, 8))


def absdiff_mean(a: np.ndarray, b: np.ndarray) -> float | None:
    """The mean absolute difference of two uint8 arrays of one shape (numpy's value exactly), the GIL held; None where
    the library is not loaded or the arrays are not both C-contiguous uint8 of one shape."""
    held = _load_held()
    if held is None or a.dtype != np.uint8 or b.dtype != np.uint8 or a.shape != b.shape:
        return None
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        return None
    return float(held.mvh_absdiff_mean(a.ctypes.data, a.size, b.ctypes.data, b.size, 1, a.size, 1))  # one row


def resize_rgb(rgb: np.ndarray, hw: tuple[int, int], order: int) -> np.ndarray | None:
    """An (h, w, 3) uint8 picture resized to ``hw`` by Pillow's BILINEAR arithmetic (``kernels/mvhost.c``, no GIL
    held), the horizontal pass first (``order`` 0) or the vertical one (1); None where the library is not loaded or a
    size is empty."""
    lib = _load()
    if lib is None or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    if rgb.strides[1:] != (3, 1) or rgb.strides[0] < 3 * rgb.shape[1]:
        rgb = np.ascontiguousarray(rgb)
    out = np.empty((hw[0], hw[1], 3), np.uint8)
    h, w = rgb.shape[:2]
    rc = lib.mvh_resize_rgb(rgb.ctypes.data, h, w, rgb.strides[0], out.ctypes.data, hw[0], hw[1], order)
    if rc < 0:
        raise MemoryError(f"kernels.mvhost: out of memory resizing a {w}x{h} picture")
    return out if rc == 0 else None


def rle8(a: np.ndarray) -> np.ndarray:
    """A uint8 array's bytes (C order) as (value, run length - 1) byte pairs, runs at most 256 long: the class maps'
    stored form (``runtime.writers.rle8_decode`` reads it back). C where the library loads (no GIL held), else the
    same pairs from numpy."""
    if a.dtype != np.uint8:
        raise TypeError(f"rle8 codes uint8 arrays, got {a.dtype}")
    flat = np.ascontiguousarray(a).reshape(-1)
    lib = _load()
    if lib is not None:
        out = np.empty(2 * flat.size, np.uint8)
        return out[: lib.mvh_rle8(flat.ctypes.data, flat.size, out.ctypes.data)]
    starts = np.flatnonzero(np.diff(flat, prepend=np.int16(flat[0]) + 1 if flat.size else 0))
    lengths = np.diff(np.append(starts, flat.size))
    split = (lengths + 255) // 256  # runs longer than 256 as several
    first = np.repeat(starts, split) + 256 * (np.arange(split.sum()) - np.repeat(np.cumsum(split) - split, split))
    count = np.minimum(np.repeat(starts + lengths, split) - first, 256)
    return np.stack([flat[first], (count - 1).astype(np.uint8)], axis=1).reshape(-1)
