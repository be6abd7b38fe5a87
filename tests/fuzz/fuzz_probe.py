"""Fuzz target: `avtool.media.probe.probe` and the ffmpeg banner parsers over mutated media files.

    make fuzz                                    (bounded; FUZZ_TIME=600 make fuzz for longer)
    .venv/bin/python tests/fuzz/fuzz_probe.py -max_total_time=60 build/fuzz/corpus tests/data/fuzz_corpus

Every input is used twice: written to a file and probed (probe returns a sane MediaInfo or raises BadInput, exit 2),
and read as ffmpeg banner text fed to each parser (each returns, or raises the exception its docstring names).
Anything else, or a probe that takes over PROBE_SECONDS, is a failure. tests/test_fuzz_corpus.py replays the
same check over the committed corpus in `make test`; copy every input that made this target fail there.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import tempfile
import threading
from pathlib import Path

try:
    import atheris
except ImportError:  # only fuzzing needs it (the `fuzz` extra); tests/test_fuzz_corpus.py imports this file without
    atheris = None

# coverage feedback from avtool's own code, when fuzzing
with atheris.instrument_imports(include=["avtool"]) if atheris and __name__ == "__main__" else contextlib.nullcontext():
    from avtool.errors import BadInput

    # `avtool.media.probe` is also the name of the function that package exports
    probe_module = importlib.import_module("avtool.media.probe")

PROBE_SECONDS = 20.0  # a tiny file probes in well under a second; more is a hang
STREAM_KINDS = ("Audio", "Video", "Subtitle", "Data")


def check_parsers(text: str) -> None:
    """Every banner parser on `text` (and on each of its lines) returns or raises its documented exception."""
    duration = probe_module._parse_duration(text)
    assert duration is None or isinstance(duration, float), duration
    assert isinstance(probe_module._container_start(text), float)
    for kind in STREAM_KINDS:
        line = probe_module._first_stream_line(text, kind)
        assert line is None or isinstance(line, str)
    for line in text.splitlines()[:200]:
        assert isinstance(probe_module._stream_start(line), float)
        try:
            rate, channels = probe_module.parse_audio_stream(line)
            assert isinstance(rate, int) and isinstance(channels, int)
        except RuntimeError:
            pass
        try:
            width, height, fps = probe_module._parse_video_stream(line)
            assert isinstance(width, int) and isinstance(height, int) and isinstance(fps, float) and fps > 0
        except RuntimeError:
            pass


def check_probe(path: Path) -> None:
    """probe(path) gives a MediaInfo or raises BadInput naming the file, within PROBE_SECONDS."""
    outcome: list[BaseException | probe_module.MediaInfo] = []

    def run() -> None:
        try:
            outcome.append(probe_module.probe(path))
        except BaseException as error:  # judged below, in the fuzzer's thread
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(PROBE_SECONDS)
    if not outcome:
        raise TimeoutError(f"probe took over {PROBE_SECONDS:g} s")
    result = outcome[0]
    if isinstance(result, BadInput):
        assert str(path) in result.message, result.message
    elif not isinstance(result, probe_module.MediaInfo):
        raise result
    else:
        check_info(result)


def check_info(info: probe_module.MediaInfo) -> None:
    """What a MediaInfo promises its users: finite, non-negative numbers, a frame rate to divide by."""
    numbers = [info.duration or 0.0]
    if info.audio is not None:
        numbers += [info.audio.duration, info.audio.start, info.audio.sample_rate, info.audio.channels]
    if info.video is not None:
        assert info.video.fps > 0, info.video
        numbers += [info.video.fps, info.video.num_frames, info.video.width, info.video.height, info.video.duration]
    assert all(math.isfinite(n) and n >= 0 for n in numbers), info


def check_input(data: bytes) -> None:
    """The whole invariant for one input (tests/test_fuzz_corpus.py replays it)."""
    check_parsers(data.decode("utf-8", errors="replace"))
    with tempfile.TemporaryDirectory(prefix="fuzz_probe.") as folder:
        path = Path(folder) / "input.media"
        path.write_bytes(data)
        check_probe(path)


def main() -> None:
    atheris.Setup(sys.argv, check_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
