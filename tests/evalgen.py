"""Media with motion bursts and clicks at known times, and straightforward reference implementations of the metrics.

The reference functions follow the structure of the published scripts (read every frame with cv2 into a list, then
loop; librosa calls as written there) so the tests can compare avtool's streaming, threaded code with them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from avtool.media.ffmpeg import ffmpeg_exe

SR = 22050

# A 10 fps, 3 s, 160x120 clip: a 40x40 white square jumps 8 px right at JUMPS (mean flow ~1.2 px, a peak above 0.1)
# and a 3x4 dot twitches 1 px at TWITCHES (mean flow ~0.03, a peak only without the 0.1 threshold).
FPS, NUM_FRAMES, WIDTH, HEIGHT = 10, 30, 160, 120
JUMPS = (5, 10, 17, 24)
TWITCHES = (13, 20)
# Clicks (s): on the jumps at 0.5 and 1.0 s; near the twitch at 1.3 s; far from all peaks at 2.15 s; two inside the
# window of the jump at 2.4 s. librosa puts a click's onset in the first onset frame (hop 512) at or after it.
CLICKS = (0.5, 1.0, 1.32, 2.15, 2.35, 2.44)


def burst_frames() -> np.ndarray:
    frames = np.zeros((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    x, dot = 20, 140
    for i in range(NUM_FRAMES):
        x += 8 if i in JUMPS else 0
        dot += (1 if dot == 140 else -1) if i in TWITCHES else 0
        frames[i, 40:80, x : x + 40] = 255
        frames[i, 100:104, dot : dot + 3] = 255
    return frames


def lossless_video(path: Path, frames: np.ndarray, fps: float, audio: Path | None = None) -> Path:
    """H.264 lossless (qp 0) so still frames decode identical; `audio` is muxed in as AAC when given."""
    height, width = frames.shape[1:3]
    audio_in = ["-i", str(audio), "-c:a", "aac", "-shortest"] if audio else []
    cmd = [ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", str(fps), "-i", "pipe:0", *audio_in, "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def click_track(times, seconds: float, sr: int = SR, amplitude: float = 0.9) -> np.ndarray:
    y = np.zeros(int(seconds * sr), np.float32)
    for t in times:
        y[round(t * sr)] = amplitude
    return y


def write_wav(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    import soundfile

    soundfile.write(str(path), y.T if y.ndim == 2 else y, sr, subtype="FLOAT")
    return path


# ---- reference implementations (structure of the published scripts) ----

def reference_read_frames(video_path: Path) -> tuple[list[np.ndarray], float]:
    import cv2

    capture = cv2.VideoCapture(str(video_path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def reference_flow(img1: np.ndarray, img2: np.ndarray) -> float:
    import cv2

    prev_gray = cv2.cvtColor(img1, cv2.COLOR_BGR2GRAY)
    curr_gray = cv2.cvtColor(img2, cv2.COLOR_BGR2GRAY)
    flow = cv2.calcOpticalFlowFarneback(prev_gray, curr_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0]


def reference_av_align(y: np.ndarray, sr: int, video_path: Path, version: str,
                       single_threaded: bool = True) -> tuple[float, list[float], list[float]]:
    """TempoTokens AV-Align on decoded mono audio `y` and the video file, in the 2025 or 2023 version.

    `single_threaded` runs OpenCV with one thread (`cv2.setNumThreads(1)`); otherwise with its default pool.
    """
    import cv2

    pool_threads = cv2.getNumThreads()
    if single_threaded:
        cv2.setNumThreads(1)
    try:
        return _reference_av_align(y, sr, video_path, version)
    finally:
        cv2.setNumThreads(pool_threads)


def _reference_av_align(y: np.ndarray, sr: int, video_path: Path, version: str) -> tuple[float, list[float], list[float]]:
    import librosa

    onset_env = librosa.onset.onset_strength(y=y, sr=sr)
    audio_peaks = librosa.frames_to_time(librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr), sr=sr)
    frames, fps = reference_read_frames(video_path)
    trajectory = [reference_flow(frames[0], frames[1])] + [reference_flow(frames[i - 1], frames[i]) for i in range(1, len(frames))]
    video_peaks = []
    for i in range(1, len(trajectory) - 1):
        if trajectory[i - 1] < trajectory[i] > trajectory[i + 1] and (version == "2023" or trajectory[i] >= 0.1):
            video_peaks.append(i / fps)
    intersection = 0
    used = [False] * len(video_peaks)
    for audio_peak in audio_peaks:
        for j, video_peak in enumerate(video_peaks):
            if (version == "2023" or not used[j]) and video_peak - 1 / fps < audio_peak < video_peak + 1 / fps:
                intersection += 1
                used[j] = True
                break
    return intersection / (len(audio_peaks) + len(video_peaks) - intersection), trajectory, video_peaks
