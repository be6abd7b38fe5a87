"""Test media made with the bundled ffmpeg's lavfi sources: tones, clicks, test patterns."""

from __future__ import annotations

import subprocess
from pathlib import Path

from avtool.media.ffmpeg import ffmpeg_exe

AUDIO_CODECS = {".mp3": ["-c:a", "libmp3lame"], ".m4a": ["-c:a", "aac"], ".ogg": ["-c:a", "libvorbis"], ".flac": [], ".wav": []}
VIDEO_CODECS = {".mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"], ".mov": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"],
                ".mkv": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "libvorbis"], ".webm": ["-c:v", "libvpx-vp9", "-c:a", "libopus", "-deadline", "realtime"]}


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def tone(path: Path, seconds: float = 3.0, freq: float = 440.0, sr: int = 44100, channels: int = 1) -> Path:
    """A sine tone in the container/codec implied by the suffix."""
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={sr}:duration={seconds}", "-ac", str(channels),
           *AUDIO_CODECS.get(path.suffix, []), str(path))
    return path


def clip(path: Path, seconds: float = 2.0, fps: int = 30, size: str = "160x120", audio: bool = True, sr: int = 44100) -> Path:
    """A test-pattern video, with a 440 Hz tone unless `audio` is False."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sr}:duration={seconds}"]
    codecs = VIDEO_CODECS[path.suffix] if audio else [c for c in VIDEO_CODECS[path.suffix] if c not in ("-c:a", "aac", "libvorbis", "libopus")]
    ffmpeg(*inputs, *codecs, str(path))
    return path
