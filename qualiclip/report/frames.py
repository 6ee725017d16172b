"""Frames of a video for the report's thumbnails, decoded with PyAV (the decoder of
:mod:`qualiclip.video`, the ``video`` extra), imported only when a report shows videos."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def frame_pictures(path: str | os.PathLike, indexes: Iterable[int], size: int
                   ) -> dict[int, tuple[Any, float | None]]:
    """The frames of video ``path`` at ``indexes`` (0-based presentation order, as
    :mod:`qualiclip.video` numbers them), each shrunk to ``size`` px on its long side:
    ``{index: (PIL RGB image, timestamp in seconds or None)}``.

    Decodes from the start up to the last wanted frame and converts only the wanted ones to
    pixels, so the cost grows with how far into the video they are, not with the video's
    length. A frame that cannot be decoded is missing from the result; without PyAV, or for a
    file that is no readable video, the result is ``{}`` (the report says "not readable").
    """
    from qualiclip.video import VideoDecoderMissing, require_av

    wanted = {int(i) for i in indexes if int(i) >= 0}
    if not wanted:
        return {}
    try:
        av = require_av()
    except VideoDecoderMissing:
        return {}
    found: dict[int, tuple[Any, float | None]] = {}
    last = max(wanted)
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                return {}
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for number, frame in enumerate(container.decode(stream)):
                if number in wanted:
                    image = frame.to_image()
                    image.thumbnail((size, size))
                    when = (float(frame.pts * stream.time_base)
                            if frame.pts is not None and stream.time_base else None)
                    found[number] = (image, when)
                if number >= last:
                    break
    except Exception:  # noqa: BLE001 - a broken file: the frames decoded so far still show
        pass
    return found
