"""AV-Align (TempoTokens, Yariv et al. 2023): intersection over union of audio onsets and motion peaks.

Reference: guyyariv/TempoTokens `av_align.py`. Its two versions give different numbers, so each has its own name.

`av-align`, the current code (bf0b1e3, 2025-02-13):
1. Audio peaks. `y, sr = librosa.load(wav)` (22 050 Hz, mono = mean of channels, soxr HQ resampling; here
   `avtool.media.load_audio(path, sr=22050)`, which decodes the same samples); `onset_strength(y=y, sr=sr)` and
   `onset_detect(onset_envelope=env, sr=sr)` with librosa's defaults (hop 512; for 22 050 Hz: pre_max 1,
   post_max 1, pre_avg 4, post_avg 5, wait 1, delta 0.07, normalize, no backtrack); times = frame * 512 / 22050.
2. Video peaks. The motion curve of `avtool.analysis.motion` (cv2 frames, Farneback, the first value repeated).
   A peak is an index i in 1..N-2 with `c[i-1] < c[i] > c[i+1]` and `c[i] >= 0.1`; its time is i / fps.
3. Matching. For each audio peak in time order, the first video peak in time order that is not yet used and has
   `v - 1/fps < a < v + 1/fps` is matched and marked used (greedy, one-to-one).
4. Score = matches / (|A| + |V| - matches), in [0, 1]. The reference averages it over the files of a folder.

`av-align-2023`, the original code (34d9502, 2023-10-26), which papers of 2023-2024 report:
- no 0.1 threshold: every strict local maximum of the curve is a video peak;
- no bookkeeping: an audio peak matches the first video peak in its window even if another audio peak already
  matched it, so one video peak can count several times and the score can exceed 1.
- Its peak finder read an undefined `n`; we take n = len(curve), as the 2025 fix does.

Quirks kept on purpose, because they change the numbers:
- the repeated first flow value, so index 1 is never a peak (c[0] == c[1]);
- the open ±1/fps window, evaluated as the reference writes it (`v - 1/fps < a < v + 1/fps` in float64);
- greedy matching in time order, which is not a maximum matching;
- audio peaks after the last video frame (audio longer than video) still count in |A|; fps is `CAP_PROP_FPS`.

Where the reference fails we define the value: with no audio onsets and no video peaks the reference divides 0 by 0
(ZeroDivisionError); here the score is None with the reason "no audio onsets and no video peaks". With peaks on
one side only the formula gives 0.0, which we keep (silent audio on a moving video, a still video on music).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from avtool.analysis.motion import MotionCurve

AUDIO_SR = 22050  # librosa.load's default rate, which the reference uses
ONSET_HOP = 512  # librosa's default hop for onset_strength and frames_to_time
PEAK_THRESHOLD = 0.1  # minimum flow magnitude of a video peak since the 2025 version
VARIANTS = ("av-align", "av-align-2023")


@dataclass(frozen=True)
class AudioOnsets:
    """librosa's onset strength envelope (hop 512 at `sr`) and the detected onset times in seconds."""

    envelope: np.ndarray
    times: np.ndarray
    sr: int = AUDIO_SR
    hop: int = ONSET_HOP

    @property
    def envelope_times(self) -> np.ndarray:
        return np.arange(len(self.envelope)) * self.hop / self.sr


@dataclass(frozen=True)
class AVAlign:
    """One AV-Align result: the score (None when undefined, see `reason`), the peaks and the matched pairs."""

    variant: str
    score: float | None
    audio_peaks: np.ndarray  # seconds
    video_peaks: np.ndarray  # frame indices into the motion curve
    matches: list[tuple[int, int]]  # (audio peak index, video peak index)
    reason: str | None = None


def audio_onsets(y: np.ndarray, sr: int = AUDIO_SR) -> AudioOnsets:
    """Onset envelope and onset times of mono `y`, as the reference's `detect_audio_peaks` computes them."""
    import librosa

    envelope = librosa.onset.onset_strength(y=y, sr=sr)
    frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr)
    return AudioOnsets(envelope, librosa.frames_to_time(frames, sr=sr), sr)


def video_peaks(curve: np.ndarray, threshold: float | None) -> np.ndarray:
    """Indices i in 1..N-2 where `curve[i]` is a strict local maximum and, unless `threshold` is None, `>= threshold`."""
    curve = np.asarray(curve, dtype=np.float64)
    inner = curve[1:-1]
    is_peak = (curve[:-2] < inner) & (inner > curve[2:])
    if threshold is not None:
        is_peak &= inner >= threshold
    return np.flatnonzero(is_peak) + 1


def match_peaks(audio_times: np.ndarray, video_times: np.ndarray, fps: float, one_to_one: bool) -> list[tuple[int, int]]:
    """Greedy matching in time order: each audio peak takes the first (unused, if `one_to_one`) video peak in its window."""
    video = [float(t) for t in video_times]
    frame = 1 / fps
    used = [False] * len(video)
    matches = []
    for i, a in enumerate(float(t) for t in audio_times):
        # Only peaks within 2 frames can pass the window test; the test itself is the reference's expression.
        j = bisect.bisect_left(video, a - 2 * frame)
        while j < len(video) and video[j] <= a + 2 * frame:
            if not (one_to_one and used[j]) and video[j] - frame < a < video[j] + frame:
                used[j] = True
                matches.append((i, j))
                break
            j += 1
    return matches


def av_align(onsets: AudioOnsets, motion: MotionCurve, variant: str = "av-align") -> AVAlign:
    """AV-Align of one audio/video pair in the named variant (`av-align` or `av-align-2023`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown AV-Align variant {variant!r}")
    current = variant == "av-align"
    peaks = video_peaks(motion.values, PEAK_THRESHOLD if current else None)
    matches = match_peaks(onsets.times, peaks / motion.fps, motion.fps, one_to_one=current)
    union = len(onsets.times) + len(peaks) - len(matches)
    if union == 0:
        return AVAlign(variant, None, onsets.times, peaks, matches, reason="no audio onsets and no video peaks")
    return AVAlign(variant, len(matches) / union, onsets.times, peaks, matches)
