"""Running the ffmpeg binary shipped by imageio-ffmpeg, and turning its failures into BadInput."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avtool.errors import BadInput

_UNREADABLE_MARKERS = (
    "Invalid data found when processing input",
    "moov atom not found",
    "could not find codec parameters",
    "Failed to find two consecutive MPEG audio frames",
    "End of file",
    "Format mp3 detected only with low score",
    "Error opening input",  # ffmpeg 7's summary line for any demuxer failure (e.g. "Input/output error" on a cut file)
)


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def file_url(path: str | os.PathLike) -> str:
    """`path` as ffmpeg must see it: `file:` + absolute path, so that a name like `concat:a|b`, `pipe:1`,
    `http:x` or `subfile,,...` is read as the file it names, never as another protocol."""
    return "file:" + os.path.abspath(path)


@contextlib.contextmanager
def ffmpeg_process(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen(cmd)`, killed and reaped when the block exits in any way.

    Stop signals are held back while the child starts, so an interrupt can never come between the fork and the
    block that owns the child: no ffmpeg outlives its caller, or writes an output after the caller removed it.
    """
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    held = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        proc = subprocess.Popen(cmd, **popen)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def run_ffmpeg(args: list[str], *, input: bytes | None = None, source: Path | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args` (an argument list, never a shell string) and return the finished process.

    stdout is read in one piece and the log goes to a temporary file (a pipe could fill up and stall a
    chatty ffmpeg). A non-zero exit raises BadInput naming `source` (the input the command was about)
    when the message points at the input, or RuntimeError otherwise.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", *args]
    with tempfile.TemporaryFile() as log:
        with ffmpeg_process(cmd, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log) as proc:
            if input is None:
                stdout = proc.stdout.read()
                proc.wait()
            else:
                stdout, _ = proc.communicate(input)
        log.seek(0)
        stderr = log.read()
    if proc.returncode != 0:
        raise ffmpeg_failure(stderr.decode(errors="replace"), source)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def ffmpeg_failure(stderr: str, source: Path | None) -> Exception:
    """The exception that describes an ffmpeg failure with this stderr."""
    if source is not None:
        if "matches no streams" in stderr or "does not contain any stream" in stderr:
            return BadInput(f"{source}: has no stream of the kind needed")
        if any(marker in stderr for marker in _UNREADABLE_MARKERS):
            return BadInput(f"{source}: not a readable audio/video file (truncated or not a media file)")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    return RuntimeError(f"ffmpeg failed: {last}")
