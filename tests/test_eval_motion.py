"""The motion curve is bit for bit the same for any worker count, pool and file schedule; `evaluate` on many files."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from evalgen import CLICKS, FPS, burst_frames, click_track, lossless_video, write_wav
from mediagen import ffmpeg

from avtool.analysis import motion
from avtool.analysis.motion import motion_curve
from avtool.pipelines.eval import EvalRequest, evaluate


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two moving test patterns of different sizes and lengths with AAC audio, and the bursts clip with clicks."""
    folder = tmp_path_factory.mktemp("motion")
    paths = []
    for name, size, seconds, period in (("a", "128x96", 2, 0.37), ("b", "96x72", 1.5, 0.29)):
        path = folder / f"{name}.mp4"
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=24:duration={seconds}", "-f", "lavfi",
               "-i", f"aevalsrc=0.8*sin(2*PI*180*t)*exp(-18*mod(t\\,{period})):s=44100:d={seconds}",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path))
        paths.append(path)
    clicks = write_wav(folder / "clicks.wav", click_track(CLICKS, 3.0))
    paths.append(lossless_video(folder / "bursts.mp4", burst_frames(), FPS, audio=clicks))
    return paths


def sequential_curve(path) -> np.ndarray:
    """The curve computed plainly: every frame, one pair after another, OpenCV as configured, numpy magnitude and mean."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    grays = []
    while (frame := capture.read())[0]:
        grays.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2GRAY))
    capture.release()
    values = []
    for prev, curr in zip(grays[:-1], grays[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(prev, curr, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        values.append(float(np.sqrt(flow[..., 0] * flow[..., 0] + flow[..., 1] * flow[..., 1]).mean(dtype=np.float64)))
    return np.array([values[0], *values])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_curve_is_bit_identical_to_the_sequential_one(videos, workers):
    for path in videos:
        np.testing.assert_array_equal(motion_curve(path, workers=workers).values, sequential_curve(path))


def test_curves_of_videos_sharing_one_pool_at_once_are_bit_identical(videos):
    expected = [sequential_curve(path) for path in videos]
    with motion.flow_pool(2) as pool, ThreadPoolExecutor(len(videos)) as files:
        curves = list(files.map(lambda path: motion_curve(path, workers=2, pool=pool).values, videos * 2))
    for curve, want in zip(curves, expected * 2, strict=True):
        np.testing.assert_array_equal(curve, want)


def test_opencv_threads_are_restored_after_curves(videos):
    import cv2

    before = cv2.getNumThreads()
    seen = []
    motion_curve(videos[0], workers=2, on_frame=lambda: seen.append(cv2.getNumThreads()))
    assert set(seen) == {1} and cv2.getNumThreads() == before


def test_on_frame_can_stop_the_decoding(videos):
    frames = 0

    def on_frame():
        nonlocal frames
        frames += 1
        if frames == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        motion_curve(videos[0], workers=2, on_frame=on_frame)
    assert frames == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_many_files_give_the_single_file_rows_in_input_order(videos, workers):
    files = [*videos, videos[0]]
    metrics = ["av-align", "av-align-2023", "bas"]
    alone = [evaluate(EvalRequest(files=[path], metrics=metrics, workers=1))["files"][0] for path in files]
    progress = []
    report = evaluate(EvalRequest(files=files, metrics=metrics, workers=workers), lambda *args: progress.append(args))
    assert report["files"] == alone
    assert {file for file, _, _ in progress} == {str(path) for path in videos}


def test_a_failing_file_stops_the_others_and_raises_in_input_order(videos, monkeypatch):
    started, compute = [], motion.motion_curve

    def failing(path, *args, **kwargs):
        started.append(path)
        if path == videos[1]:
            raise RuntimeError("second file fails")
        return compute(path, *args, **kwargs)

    monkeypatch.setattr(motion, "motion_curve", failing)
    with pytest.raises(RuntimeError, match="second file fails"):
        evaluate(EvalRequest(files=[videos[0], videos[1], *[videos[2]] * 6], workers=2))
    assert len(started) <= 3  # the two files in flight, and perhaps one taken up before the failure was seen
    assert not [t for t in threading.enumerate() if t.name.startswith(("farneback", "eval-file"))]
