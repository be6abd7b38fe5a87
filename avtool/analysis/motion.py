"""The optical-flow motion curve of a video, as TempoTokens' AV-Align computes it.

Reference semantics (guyyariv/TempoTokens `av_align.py`, both versions):
- frames are what `cv2.VideoCapture.read()` returns, every frame, BGR; fps is `CAP_PROP_FPS`;
- each frame is converted with `cv2.cvtColor(COLOR_BGR2GRAY)` at full resolution;
- for a frame pair, `cv2.calcOpticalFlowFarneback(prev, curr, None, 0.5, 3, 15, 3, 5, 1.2, 0)` and the value is
  `cv2.mean(cv2.magnitude(fx, fy))[0]`, the mean flow magnitude in pixels per frame;
- the curve has one value per frame: entry 0 repeats flow(0→1) (a quirk of the reference, kept) and entry i is
  flow(i-1→i).

The reference reads every frame into a list first. Here frames are decoded one at a time in the calling thread and
each pair's flow and mean magnitude run on a thread pool (OpenCV releases the GIL), private or shared by several
videos. At most `2 * workers` pairs of a video are in flight, so memory is a few frames however long the video is.

The one deliberate difference: the magnitude and its mean are taken with numpy (float32 sqrt(fx² + fy²), float64
pairwise sum) instead of cv2.magnitude and cv2.mean. OpenCV's two are not reproducible to the last bit: cv2.magnitude
rounds differently depending on the memory alignment of the copies it makes of fx and fy, and cv2.mean sums in
stripes of OpenCV's thread pool. So the reference's values move by ~1e-10 (relative) from run to run, and its
entries 0 and 1, both flow(0→1), can differ: frame 1 is then sometimes a peak there, never here. numpy's are the
same on every machine and in every thread, so the curve is bit for bit the same for any number of workers and of
files at once, and within ~1e-8 (relative) of the reference's; all other peaks and the scores come out the same.

CPU per frame (Farneback is nearly all of it, and gives the same bits with or without OpenCV's threads):
- OpenCV's own pool is set to one thread while curves are computed: the workers are the parallelism, and the
  pool's threads, woken by each cvtColor and inside each Farneback call, only compete for the same cores.
- glibc is told to keep freed memory (`_keep_freed_memory`). By default it returns Farneback's tens of MB of buffers
  to the kernel after every call and the next call faults them in again, zeroed: 4 000 to 7 000 page faults per 480p
  frame, ~10% of the CPU time, more in worker threads, whose arenas unmap whole sub-heaps.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from avtool.errors import BadInput
from avtool.media import check_input_file
from avtool.media.ffmpeg import file_url

FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)  # pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags
PAIRS_IN_FLIGHT_PER_WORKER = 2


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


def flow_pool(workers: int | None = None) -> ThreadPoolExecutor:
    """A pool of `workers` Farneback threads (default: the usable cores) that several `motion_curve` calls can share."""
    _keep_freed_memory()  # before the threads start, so that they share the main arena
    return ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="farneback")


def motion_curve(path: str | os.PathLike, workers: int | None = None, on_frame: Callable[[], None] | None = None,
                 pool: Executor | None = None) -> MotionCurve:
    """The AV-Align motion curve of the video `path`, decoded with cv2 as the reference does.

    `workers` threads run Farneback (default: the usable cores); with `pool` (see `flow_pool`), its threads do and
    `workers` should be their number. `on_frame` is called after each decoded frame; what it raises stops the
    decoding and propagates. Raises BadInput for a file cv2 cannot open, or a video with fewer than two frames.
    """
    import cv2

    path = check_input_file(path)
    workers = workers or default_workers()
    _keep_freed_memory()
    with _one_opencv_thread():
        capture = cv2.VideoCapture(file_url(path), cv2.CAP_FFMPEG)  # file:/abs/path: never read as another protocol
        try:
            if not capture.isOpened():
                raise BadInput(f"{path}: OpenCV cannot open the video stream", hint="check that the file has a video track")
            fps = capture.get(cv2.CAP_PROP_FPS)
            if not fps > 0:
                raise BadInput(f"{path}: the video reports no frame rate")
            if pool is None:
                with flow_pool(workers) as own_pool:
                    values, num_frames = _flow_values(capture, own_pool, workers, on_frame)
            else:
                values, num_frames = _flow_values(capture, pool, workers, on_frame)
        finally:
            capture.release()
    if num_frames < 2:
        raise BadInput(f"{path}: has {num_frames} frame(s); optical flow needs at least two")
    return MotionCurve(np.array([values[0], *values], dtype=np.float64), fps)


def _flow_values(capture, pool: Executor, workers: int, on_frame: Callable[[], None] | None) -> tuple[list[float], int]:
    """flow(i-1→i) for every decoded frame i ≥ 1, in order, and the number of frames."""
    import cv2

    values: list[float] = []
    pending: deque[Future] = deque()
    prev_gray = None
    num_frames = 0
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
                if len(pending) >= PAIRS_IN_FLIGHT_PER_WORKER * workers:
                    values.append(pending.popleft().result())
            prev_gray = gray
        values.extend(future.result() for future in pending)
    finally:
        for future in pending:
            future.cancel()
    return values, num_frames


_opencv_lock = threading.Lock()
_opencv_users = 0
_opencv_threads = 0


@contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """OpenCV's thread pool at one thread while any motion curve is being computed; restored after the last one."""
    global _opencv_users, _opencv_threads
    import cv2

    with _opencv_lock:
        if _opencv_users == 0:
            _opencv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_users += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users -= 1
            if _opencv_users == 0:
                cv2.setNumThreads(_opencv_threads)


@functools.cache
def _keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of giving it back to the kernel after each Farneback call.

    Buffers up to 64 MiB come from the heap (1080p needs more than glibc's usual 32 MiB), up to 256 MiB may stay
    free on top of it, and threads started from now on share one arena: a thread's own arena unmaps whole 64 MiB
    sub-heaps as they empty (720p and up). This holds for the rest of the process. Elsewhere than glibc, nothing changes.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_arena_max, 1)
