"""Reading and writing video frames through the bundled ffmpeg, both streaming.

Frames are decoded by ffmpeg into a pipe rather than by decord: decord 0.6 fails on small frame
widths (e.g. 48 px, the size of the tiny checkpoints' videos) with "The size must exactly match".

`iter_frames` yields fixed-size batches so memory stays flat however long the video is;
`write_video` pipes frames into ffmpeg one at a time. Audio given to `write_video` is trimmed or
zero-padded to exactly the video's length before it is muxed in as AAC.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from avtool.errors import BadInput
from avtool.media.ffmpeg import ffmpeg_exe, ffmpeg_failure, ffmpeg_process, file_url, run_ffmpeg
from avtool.media.files import atomic_output, check_input_file, temporary_sibling
from avtool.media.probe import VideoStreamInfo, probe


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    num_frames: int | None = None,
    batch_size: int = 32,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames of `path` in batches of shape (n, H, W, 3).

    `fps` resamples by nearest timestamp (None keeps every source frame); `size` is (width, height);
    `start` is in seconds; `num_frames` caps the count (None: to the end of the video).
    """
    path = check_input_file(path)
    video = probe(path).require_video()
    indices = frame_indices(np.arange(video.num_frames) / video.fps, fps, start, num_frames)
    yield from frames_at(path, indices, size, batch_size, video)


def frames_at(
    path: str | os.PathLike,
    indices: Iterable[int],
    size: tuple[int, int] | None = None,
    batch_size: int = 32,
    video: VideoStreamInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield the source frames `indices` (ascending, repeats allowed) of `path` as uint8 RGB batches (n, H, W, 3).

    Runs of nearby indices are decoded in one pass from an accurate seek to their first frame; an index far from
    the previous one starts a new seek, so a few frames spread over a long video cost a few short decodes.
    """
    path = check_input_file(path)
    video = video or probe(path).require_video()
    indices = np.asarray(list(indices), dtype=np.int64)
    if len(indices) and (np.any(np.diff(indices) < 0) or indices[0] < 0):
        raise ValueError("frames_at: indices must be ascending and non-negative")
    gap = max(int(2 * video.fps), 1)  # decoding more than ~2 s of unused frames costs more than a seek
    runs = np.split(indices, np.flatnonzero(np.diff(indices) > gap) + 1) if len(indices) else []
    batch: list[np.ndarray] = []
    for run in runs:
        for frame in _decode_run(path, video, run, size):
            batch.append(frame)
            if len(batch) >= batch_size:
                yield np.stack(batch)
                batch = []
    if batch:
        yield np.stack(batch)


def _decode_run(path: Path, video: VideoStreamInfo, indices: np.ndarray, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """The frames `indices` (ascending, close together) from one ffmpeg decode starting at the first of them."""
    width, height = size or (video.width, video.height)
    first, last = int(indices[0]), int(indices[-1])
    scale = ["-vf", f"scale={width}:{height}:flags=area"] if size else []
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-noautorotate",
           # seek half a frame before the first frame wanted: accurate seeking then starts exactly on it
           "-ss", f"{max(first - 0.5, 0) / video.fps:.6f}", "-i", file_url(path), "-map", "0:v:0", *scale,
           "-frames:v", str(last - first + 1), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = width * height * 3
    with ffmpeg_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        wanted = iter(indices.tolist())
        target = next(wanted)
        for source_index in range(first, last + 1):
            data = proc.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            while target == source_index:
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
                target = next(wanted, None)


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    num_frames: int | None = None,
) -> np.ndarray:
    """All requested frames of `path` as one (n, H, W, 3) uint8 array; see `iter_frames`."""
    batches = list(iter_frames(path, fps, size, start, num_frames))
    if not batches:
        width, height = size or (0, 0)
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.concatenate(batches)


def frame_indices(timestamps: np.ndarray, fps: float | None, start: float, num_frames: int | None) -> np.ndarray:
    """Source frame indices for output frames at `start + k/fps`, each the source frame whose start time is nearest."""
    first = int(np.searchsorted(timestamps, start - 1e-6))
    if fps is None:
        indices = np.arange(first, len(timestamps))
    else:
        end = timestamps[-1] + (timestamps[-1] - timestamps[-2] if len(timestamps) > 1 else 0.0)
        count = int(np.floor((end - start) * fps + 1e-6))
        wanted = start + np.arange(max(count, 0)) / fps
        right = np.clip(np.searchsorted(timestamps, wanted), 1, len(timestamps) - 1)
        left = right - 1
        indices = np.where(wanted - timestamps[left] <= timestamps[right] - wanted, left, right)
    return indices[:num_frames] if num_frames is not None else indices


def write_video(
    frames: Iterable[np.ndarray],
    fps: float,
    path: str | os.PathLike,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Encode uint8 RGB frames (each (H, W, 3) or a batch (n, H, W, 3)) as H.264 yuv420p mp4 at `path`.

    `audio` (float32, (n,) or (channels, n)) at `sample_rate` is fitted to the video's duration and
    added as AAC. The file appears at `path` only when complete.
    """
    path = Path(path)
    if audio is not None and not sample_rate:
        raise ValueError("write_video: audio needs a sample_rate")
    with atomic_output(path) as tmp:
        if audio is None:
            num_frames = _encode_frames(frames, fps, tmp)
        else:
            video_only = temporary_sibling(path, ".video.mp4")
            try:
                num_frames = _encode_frames(frames, fps, video_only)
                fitted = fit_length(np.atleast_2d(audio), round(num_frames / fps * sample_rate))
                _mux_raw_audio(video_only, fitted, sample_rate, tmp)
            finally:
                video_only.unlink(missing_ok=True)
        check_written(tmp, path, num_frames=num_frames, audio=audio is not None)
    return path


def mux(video: str | os.PathLike, audio: str | os.PathLike, out: str | os.PathLike, pad_audio: bool = False) -> Path:
    """Copy the video stream of `video` (no re-encode), add the first audio stream of `audio` as AAC, stop at the shorter.

    `pad_audio`: the audio is padded with silence, so the output lasts as long as the video and holds all of it.
    """
    video, audio, out = check_input_file(video), check_input_file(audio), Path(out)
    probe(video).require_video()
    probe(audio).require_audio()
    pad = ["-af", "apad"] if pad_audio else []
    with atomic_output(out) as tmp:
        run_ffmpeg(
            ["-y", "-v", "error", "-i", file_url(video), "-i", file_url(audio), "-map", "0:v:0", "-map", "1:a:0",
             "-c:v", "copy", *pad, "-c:a", "aac", "-b:a", "192k", "-shortest", "-f", "mp4", file_url(tmp)],
        )
        check_written(tmp, out, num_frames=None, audio=True)
    return out


def check_written(written: Path, name: Path, num_frames: int | None, audio: bool) -> None:
    """Probe a file just written, before it gets its final `name`: the streams it must hold, and the frame count.

    A file without them is our failure (RuntimeError: exit 1), never a result.
    """
    try:
        info = probe(written)
    except BadInput as error:
        raise RuntimeError(f"ffmpeg wrote {name} unreadable ({error.message})") from None
    frames = info.video.num_frames if info.video else 0
    if frames == 0 or (num_frames is not None and frames != num_frames) or (audio and info.audio is None):
        raise RuntimeError(f"ffmpeg wrote {name} without the expected streams (video frames {frames}"
                           f"{f' of {num_frames}' if num_frames is not None else ''}, audio {'yes' if info.audio else 'no'})")


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the last axis of `samples` to `length`."""
    if samples.shape[-1] >= length:
        return samples[..., :length]
    pad = [(0, 0)] * (samples.ndim - 1) + [(0, length - samples.shape[-1])]
    return np.pad(samples, pad)


def _encode_frames(frames: Iterable[np.ndarray], fps: float, out: Path) -> int:
    """Pipe frames into an ffmpeg libx264 encoder writing `out`; return the frame count."""
    batches = (np.asarray(item, dtype=np.uint8) for item in frames)
    batches = (batch[None] if batch.ndim == 3 else batch for batch in batches)
    first = next(batches, None)
    if first is None:
        raise BadInput(f"{out.name}: no frames to write")
    height, width = first.shape[1:3]
    count = 0
    with ffmpeg_process(_encoder_command(width, height, fps, out), stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            for batch in itertools.chain([first], batches):
                proc.stdin.write(np.ascontiguousarray(batch).tobytes())
                count += len(batch)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped reading: its log says why
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise ffmpeg_failure(stderr, None)
    return count


def _encoder_command(width: int, height: int, fps: float, out: Path) -> list[str]:
    return [
        ffmpeg_exe(), "-hide_banner", "-y", "-v", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "pipe:0",
        # yuv420p needs even sizes: pad odd ones by a pixel rather than refuse them.
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart", "-f", "mp4", file_url(out),
    ]


def _mux_raw_audio(video: Path, samples: np.ndarray, sample_rate: int, out: Path) -> None:
    channels = samples.shape[0]
    run_ffmpeg(
        ["-y", "-v", "error", "-i", file_url(video), "-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0",
         # no -shortest: the audio is already fitted to the video, and -shortest cuts on AAC frames, dropping a frame
         "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-f", "mp4", file_url(out)],
        input=np.ascontiguousarray(samples.T, dtype=np.float32).tobytes(),
    )
