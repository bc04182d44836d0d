"""A video source that also delivers the codec's motion vectors (for ``--mode mv`` / ``stream-mv``).

It is the runtime's :class:`runtime.sources.VideoSource` with FFmpeg's ``+export_mvs`` flag and a
side hook that turns each decoded frame's vectors into a stride-4
:class:`runtime.motion_vectors.MotionField` in ``Frame.side["motion"]``. The field is computed in
the decode thread, so it overlaps the GPU work like decoding does. ``MotionVectorDecoder`` holds
the semantics (sign, units, multi-frame detection); this module only plugs it into the loop.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from runtime.errors import SourceError
from runtime.motion_vectors import MotionVectorDecoder, MultiFrameMotionWarning
from runtime.propagation import MV_STRIDE
from runtime.sources import LIVE_PREFIXES, Source, VideoSource, open_source


class _FieldMaker(MotionVectorDecoder):
    """MotionVectorDecoder's per-frame field logic without opening its own container."""

    def __init__(self, name: str, stride: int) -> None:  # noqa: D107 - deliberately skips the parent's open
        self.path, self.stride, self.warn, self._warned = Path(name), stride, True, False


def motion_side_hook(name: str, stride: int = MV_STRIDE) -> Any:
    """side_hook(av_frame, index) -> {"motion": MotionField} for VideoSource."""
    maker = _FieldMaker(name, stride)

    def hook(frame: Any, index: int) -> dict[str, Any]:
        return {"motion": maker.field(frame, index)}

    return hook


def open_mv_source(spec: str | Path, stride: int = MV_STRIDE) -> Source:
    """Like ``open_source`` but video only, with motion vectors in each frame's side data.

    Image folders have no motion vectors: a clear SourceError. Streams with B-frames or several
    reference frames warn once (their vectors may span several frames; frames whose vectors do
    are treated as key frames by the policies).
    """
    s = str(spec)
    base = open_source(s)  # the usual checks and messages (missing, empty, folder, ...)
    if not isinstance(base, VideoSource):
        base.close()
        raise SourceError(f"{s}: motion-vector modes need a video input (a folder of images has no motion vectors)")
    base.close()
    live = s.startswith(LIVE_PREFIXES) or s.startswith("webcam:")
    src = VideoSource(
        s,
        live=base.live if live else False,
        codec_options={"flags2": "+export_mvs"},
        side_hook=motion_side_hook(s, stride),
    )
    return src


def probe_multi_frame(path: str | Path) -> bool:
    """True when the file's vectors may span several frames (B-frames / several references)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultiFrameMotionWarning)
        dec = MotionVectorDecoder(path, stride=MV_STRIDE, warn=False)
        try:
            return dec.info.multi_frame
        finally:
            dec.close()
