"""The optical-flow motion curve of a video, as TempoTokens' AV-Align computes it.

Reference semantics (guyyariv/TempoTokens `av_align.py`, both versions):
- frames are what `cv2.VideoCapture.read()` returns, every frame, BGR; fps is `CAP_PROP_FPS`;
- each frame is converted with `cv2.cvtColor(COLOR_BGR2GRAY)` at full resolution;
- for a frame pair, `cv2.calcOpticalFlowFarneback(prev, curr, None, 0.5, 3, 15, 3, 5, 1.2, 0)` and the value is
  `cv2.mean(cv2.magnitude(fx, fy))[0]`, the mean flow magnitude in pixels per frame;
- the curve has one value per frame: entry 0 repeats flow(0→1) (a quirk of the reference, kept) and entry i is
  flow(i-1→i).

The reference reads every frame into a list first. Here frames are decoded one at a time in the calling thread and
each pair's flow and mean magnitude run on a thread pool (OpenCV releases the GIL; one Farneback call uses one core).
At most `2 * workers` pairs are in flight, so memory is a few frames however long the video is.

The one deliberate difference: the magnitude and its mean are taken with numpy (float32 sqrt(fx² + fy²), float64
pairwise sum) instead of cv2.magnitude and cv2.mean. OpenCV's two are not reproducible to the last bit: cv2.mean sums
in stripes of OpenCV's thread pool, and cv2.magnitude takes different code paths depending on the pool and the calling
thread, so the reference's own values move by ~1e-10 (relative) with the machine's core count. numpy's are the same
on every machine and in every thread, so the curve is bit for bit the same for any number of workers, and within
~1e-8 (relative) of the reference's; peaks and scores come out the same (tests check both).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from avtool.errors import BadInput
from avtool.media import check_input_file

FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)  # pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags


@dataclass(frozen=True)
class MotionCurve:
    """Mean optical-flow magnitude per frame (`values[i]`: flow into frame i; `values[0] == values[1]`)."""

    values: np.ndarray
    fps: float

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.values)) / self.fps


def flow_magnitude(prev_gray: np.ndarray, gray: np.ndarray) -> float:
    """Mean Farneback flow magnitude from `prev_gray` to `gray` (uint8 grayscale frames), with the reference parameters."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(prev_gray, gray, None, *FARNEBACK_PARAMS)
    squares = np.square(flow)
    magnitude = squares[..., 0] + squares[..., 1]  # float32 sqrt(fx² + fy²), as cv2.magnitude (see the module notes)
    np.sqrt(magnitude, out=magnitude)
    return float(np.add.reduce(magnitude, axis=None, dtype=np.float64)) / magnitude.size


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def motion_curve(path: str | os.PathLike, workers: int | None = None, on_frame: Callable[[], None] | None = None) -> MotionCurve:
    """The AV-Align motion curve of the video `path`, decoded with cv2 as the reference does.

    `workers` threads run Farneback (default: the usable cores); `on_frame` is called after each decoded frame.
    Raises BadInput for a file cv2 cannot open, or a video with fewer than two frames.
    """
    import cv2

    path = check_input_file(path)
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise BadInput(f"{path}: OpenCV cannot open the video stream", hint="check that the file has a video track")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not fps > 0:
            raise BadInput(f"{path}: the video reports no frame rate")
        values, num_frames = _flow_values(capture, workers or default_workers(), on_frame)
    finally:
        capture.release()
    if num_frames < 2:
        raise BadInput(f"{path}: has {num_frames} frame(s); optical flow needs at least two")
    return MotionCurve(np.array([values[0], *values], dtype=np.float64), fps)


def _flow_values(capture, workers: int, on_frame: Callable[[], None] | None) -> tuple[list[float], int]:
    """flow(i-1→i) for every decoded frame i ≥ 1, in order, and the number of frames."""
    import cv2

    values: list[float] = []
    pending: deque[Future] = deque()
    prev_gray = None
    num_frames = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farneback") as pool:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                num_frames += 1
                if on_frame is not None:
                    on_frame()
                if prev_gray is not None:
                    pending.append(pool.submit(flow_magnitude, prev_gray, gray))
                    if len(pending) >= 2 * workers:
                        values.append(pending.popleft().result())
                prev_gray = gray
            values.extend(future.result() for future in pending)
        finally:
            for future in pending:
                future.cancel()
    return values, num_frames
