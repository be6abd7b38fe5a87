"""Cutting training clips out of source videos: a time window, a crop window, resized, at a fixed frame rate.

The crop follows MusicInfuser's AIST rule, generalised to any source size. Upstream cuts a 1272x720 window out of
1920x1080 AIST videos, centred horizontally and 90 px below centre, and resizes it to 848x480. Here the window has the
output's aspect ratio and 2/3 of the source's height (720 of 1080), or the source's full width where that is
narrower; it sits 1/12 of the source's height (90 of 1080) below centre, moved up where it would leave the frame.
On a 1920x1080 source and an 848x480 output this is upstream's window exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from avtool.media.ffmpeg import file_url, run_ffmpeg
from avtool.media.files import atomic_output

WINDOW_HEIGHT_SHARE = 2 / 3  # AIST: 720 of 1080 rows
WINDOW_DROP_SHARE = 1 / 12  # AIST: 90 of 1080 rows below centre
AUDIO_RATE = 44100  # what upstream's moviepy writes, and the rate `avtool dance` resamples from
VIDEO_BITRATE = "5000k"


@dataclass(frozen=True)
class CropWindow:
    """A rectangle of the source frame, in source pixels."""

    x: int
    y: int
    width: int
    height: int


def crop_window(source_size: tuple[int, int], output_size: tuple[int, int]) -> CropWindow:
    """The window of a (width, height) source that becomes a (width, height) output (see the module's note)."""
    source_width, source_height = source_size
    aspect = output_size[0] / output_size[1]
    height = round(source_height * WINDOW_HEIGHT_SHARE)
    width = round(height * aspect)
    if width > source_width:
        width, height = source_width, round(source_width / aspect)
    x = (source_width - width) // 2
    y = min((source_height - height) // 2 + round(source_height * WINDOW_DROP_SHARE), source_height - height)
    return CropWindow(x, y, width, height)


def cut_clip(source: str | os.PathLike, output: str | os.PathLike, start: float, seconds: float, window: CropWindow,
             size: tuple[int, int], fps: int) -> Path:
    """Write `seconds` of `source` from `start` (seconds), cropped to `window`, resized to `size` (width, height), at
    `fps`, as H.264 with AAC audio at 44.1 kHz. The file appears at `output` only when complete."""
    source, output = Path(source), Path(output)
    video_filter = f"fps={fps},crop={window.width}:{window.height}:{window.x}:{window.y},scale={size[0]}:{size[1]},setsar=1"
    with atomic_output(output) as tmp:
        run_ffmpeg(["-y", "-nostdin", "-v", "error", "-ss", f"{start:.6f}", "-t", f"{seconds:.6f}", "-i", file_url(source),
                    "-map", "0:v:0", "-map", "0:a:0", "-sn", "-dn", "-map_metadata", "-1", "-vf", video_filter,
                    "-c:v", "libx264", "-b:v", VIDEO_BITRATE, "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "192k", "-ar", str(AUDIO_RATE), "-f", "mp4", file_url(tmp)],
                   source=source)
    return output
