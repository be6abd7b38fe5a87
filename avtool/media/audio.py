"""Decoding audio from any container ffmpeg reads, one window at a time.

ffmpeg decodes only the requested window (`-ss`/`-t` as input options seek before decoding) at the
file's own sample rate, as float32. Down-mixing is the mean of the channels and resampling is soxr's
"HQ" quality, which is what `librosa.load` does, so features computed on our audio match code written
against librosa.
"""

from __future__ import annotations

import os
import re

import numpy as np

from avtool.errors import BadInput
from avtool.media.ffmpeg import file_url, run_ffmpeg
from avtool.media.files import check_input_file
from avtool.media.probe import parse_audio_stream


def load_audio(
    path: str | os.PathLike,
    sr: int | None = None,
    mono: bool = True,
    start: float = 0.0,
    duration: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode `duration` seconds (all if None) from `start` of the first audio stream of `path`.

    Returns (samples, sample_rate): float32 of shape (n,) when `mono`, else (channels, n), as librosa.
    `sr` None keeps the file's own rate.
    """
    path = check_input_file(path)
    if start < 0 or (duration is not None and duration < 0):
        raise BadInput(f"{path}: start and duration must not be negative")
    window = ["-ss", f"{start:.6f}"] if start > 0 else []
    if duration is not None:
        window += ["-t", f"{duration:.6f}"]
    proc = run_ffmpeg(
        [*window, "-i", file_url(path), "-map", "0:a:0", "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"],
        source=path,
    )
    native_sr, channels = _output_format(proc.stderr.decode(errors="replace"))
    samples = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, channels).T
    if mono:
        samples = samples.mean(axis=0) if channels > 1 else samples[0]
    if sr is not None and sr != native_sr and samples.shape[-1] > 0:
        samples = resample(samples, native_sr, sr)
        native_sr = sr
    return np.ascontiguousarray(samples, dtype=np.float32), native_sr


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr HQ (librosa's default)."""
    import soxr

    if samples.ndim == 1:
        return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32)
    return soxr.resample(samples.T, orig_sr, target_sr, quality="HQ").T.astype(np.float32)


def _output_format(stderr: str) -> tuple[int, int]:
    """Sample rate and channel count of the pcm stream ffmpeg wrote, from its log."""
    output = stderr.split("Output #0", 1)[-1]
    line = next((ln for ln in output.splitlines() if re.search(r"Stream #\d+:\d+.*: Audio:", ln)), None)
    if line is None:
        raise RuntimeError("ffmpeg did not describe the decoded audio stream")
    return parse_audio_stream(line)
