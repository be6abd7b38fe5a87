"""What a media file holds, read without ffprobe.

Stream facts come from the banner the bundled ffmpeg prints for `-i FILE`; the audio duration and the
video frame count come from one stream-copy pass per stream into the null muxer (packets only, no
decoding, so a 10-minute file takes milliseconds). The audio duration is the end of its last packet.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from avtool.errors import BadInput
from avtool.media.ffmpeg import ffmpeg_exe, ffmpeg_failure, file_url, run_ffmpeg
from avtool.media.files import check_input_file

T = TypeVar("T")

_CHANNEL_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


@dataclass(frozen=True)
class AudioStreamInfo:
    sample_rate: int
    channels: int
    duration: float  # of the audio itself, from its first sample to its last
    start: float = 0.0  # where the audio begins in the file's timeline (> 0 when it starts after the video)


@dataclass(frozen=True)
class VideoStreamInfo:
    fps: float
    num_frames: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration: float | None
    audio: AudioStreamInfo | None
    video: VideoStreamInfo | None

    def require_audio(self) -> AudioStreamInfo:
        if self.audio is None:
            raise BadInput(f"{self.path}: has no audio track", hint="give a file with sound")
        return self.audio

    def require_video(self) -> VideoStreamInfo:
        if self.video is None or self.video.num_frames == 0:
            raise BadInput(f"{self.path}: has no video track", hint="give a video file")
        return self.video


def probe(path: str | os.PathLike) -> MediaInfo:
    """Describe the container, first audio stream and first (non-cover-art) video stream of `path`."""
    path = check_input_file(path)
    banner = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", file_url(path)], capture_output=True)
    # ffmpeg quotes the file's name in the banner (control characters as '?'): without it, a name cannot pass for a
    # stream line or a duration
    name = re.sub(rb"[\x00-\x07\x0e-\x1f]", b"?", os.fsencode(file_url(path)))
    text = banner.stderr.replace(name, b"").decode(errors="replace")
    if "Input #0" not in text:
        raise ffmpeg_failure(text, path)
    if re.search(r"Input #0, (image2|\w+_pipe|gif|webp)\b", text):
        raise BadInput(f"{path}: is an image, not an audio or video file")
    duration = _parse_duration(text)
    audio_line = _first_stream_line(text, "Audio")
    video_line = _first_stream_line(text, "Video")
    if audio_line is None and video_line is None:
        raise BadInput(f"{path}: has no audio or video stream")
    audio = video = None
    if audio_line is not None:
        sample_rate, channels = _parse_stream(parse_audio_stream, audio_line, path)
        # the copy pass ends at the audio's last sample, counted from the file's start
        end = max(int(_copy_pass(path, "a")["out_time_us"]), 0) / 1e6
        if duration is not None and end > duration + 1 and "Estimating duration from bitrate" not in text:
            end = duration  # a short ogg's end-trimmed last packet reads as 2**32 ticks long
        start = min(max(_stream_start(audio_line) - _container_start(text), 0.0), end)
        audio = AudioStreamInfo(sample_rate, channels, end - start, start)
    if video_line is not None:
        width, height, fps = _parse_stream(_parse_video_stream, video_line, path)
        frames = int(_copy_pass(path, "v")["frame"])
        video = VideoStreamInfo(fps, frames, width, height)
    return MediaInfo(path, duration, audio, video)


def _parse_stream(parse: Callable[[str], T], line: str, path: Path) -> T:
    """`parse(line)`; a stream line of the user's file that it cannot read makes the file a bad input (exit 2)."""
    try:
        return parse(line)
    except RuntimeError:
        raise BadInput(f"{path}: not a readable audio/video file (ffmpeg describes a stream as {line!r})") from None


def parse_audio_stream(line: str) -> tuple[int, int]:
    """(sample rate, channels) from an ffmpeg `Stream #...: Audio: ...` line; RuntimeError if one is missing."""
    rate = re.search(r"(?<!\d)(\d{1,9}) Hz", line)  # bounded: int() refuses over 4300 digits
    layout = re.search(r"Hz, ([^,]+)", line)
    if rate is None or layout is None:
        raise RuntimeError(f"cannot parse ffmpeg audio stream line: {line!r}")
    name = layout.group(1).strip()
    named = re.match(r"(\d{1,9}) channels", name)
    channels = int(named.group(1)) if named else _CHANNEL_LAYOUTS.get(name.split("(")[0], 2)
    return int(rate.group(1)), channels


def _first_stream_line(text: str, kind: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Stream #0:") and f": {kind}:" in stripped and "attached pic" not in stripped:
            return stripped
        if stripped.startswith("Output #"):
            break
    return None


def _parse_duration(text: str) -> float | None:
    m = re.search(r"^\s*Duration: (\d{1,9}):(\d{1,9}):(\d+(?:\.\d+)?)", text, re.M)  # not in a metadata value
    if m is None:
        return None
    hours, minutes, seconds = m.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _stream_start(line: str) -> float:
    """A stream's own start time, which ffmpeg prints on its line (`start 4.976780`) when it is not the file's."""
    match = re.search(r"\bstart (-?\d+(?:\.\d+)?)", line)
    return float(match.group(1)) if match else 0.0


def _container_start(text: str) -> float:
    match = re.search(r"^\s*Duration: .*?, start: (-?\d+(?:\.\d+)?)", text, re.M)
    return float(match.group(1)) if match else 0.0


def _parse_video_stream(line: str) -> tuple[int, int, float]:
    """(width, height, fps > 0) from an ffmpeg `Stream #...: Video: ...` line; RuntimeError if one is missing."""
    size = re.search(r", (\d{1,5})x(\d{1,5})(?=[ ,\[]|$)", line)
    rate = re.search(r", (\d+(?:\.\d+)?)(k?) fps", line) or re.search(r", (\d+(?:\.\d+)?)(k?) tbr", line)
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    if size is None or not fps > 0:  # ffmpeg prints "0.0000 fps" below 0.00005
        raise RuntimeError(f"cannot parse ffmpeg video stream line: {line!r}")
    return int(size.group(1)), int(size.group(2)), fps


def _copy_pass(path: Path, stream: str) -> dict[str, str]:
    """Progress counters of copying the first `stream` ('a' or 'v') into the null muxer."""
    proc = run_ffmpeg(
        ["-v", "error", "-i", file_url(path), "-map", f"0:{stream}:0", "-c", "copy", "-f", "null", "-progress", "pipe:1", "-nostats", "-"],
        source=path,
    )
    counters: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        key, _, value = line.partition("=")
        if value and value != "N/A":
            counters[key] = value
    counters.setdefault("out_time_us", "0")
    counters.setdefault("frame", "0")
    return counters
