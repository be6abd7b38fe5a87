"""Beat Alignment Score (BAS): how close motion beats (pauses in movement) fall to music beats.

Two published directions; both are reported, under their own names, with σ = 3 motion frames.

`bas-bailando` (lisiyao21/Bailando `utils/beat_align_score.py`):
- motion speed s_t = mean over joints of ||x_{t+1,j} - x_{t,j}||, t = 0..T-2, smoothed by
  `scipy.ndimage.gaussian_filter(s, 5)`; motion beats = `argrelextrema(s, np.less)` (strict local minima, order 1);
- music beats: audio at fps·512 Hz (so hop 512 gives one onset frame per motion frame), the percussive part of
  `librosa.effects.hpss`, `onset_strength(aggregate=np.median)`, `beat_track(onset_envelope=env, sr=sr)`;
  beats at frames >= T-1 are dropped (the reference truncates the beat track to the speed curve's length);
- score = mean over music beats b of exp(-min_m (m - b)^2 / (2·9)).

`bas-fact` (google-research/mint `tools/calculate_beat_scores.py`, also Dance2Music-Diffusion's
`calculate_beat_scores_smpl.py`):
- envelope e_t = sum over joints of ||x_t - x_{t-1}|| in float32, e_0 = 0, t = 0..T-1, not smoothed; motion beats
  = `argrelextrema(e, np.less, order=10)` at 60 fps ("10 for 60FPS" in the code); at other rates we use
  order = max(1, round(10·fps/60)), the same 1/6 s;
- music beats: audio at fps·512 Hz, `onset_strength` (defaults), `beat_track(onset_envelope=env, sr=sr,
  hop_length=512, tightness=100)`, beats at frames >= T dropped. Not reproduced: mint passes start_bpm from the
  AIST++ music id or a cached tempo; arbitrary music has neither, so librosa's default start (120 BPM) is used.
- score = mean over motion beats m of exp(-min_b (b - m)^2 / (2·9)), computed in float32 as the reference does.
  mint skips the 120 seed frames of generated motion; that is specific to its seeded generation and not done here.

Sources of the motion: a joints array (T, J, 3) at its own fps (`bas-*`), or, for a plain video, the AV-Align
optical-flow curve (`bas-flow-*`): the flow magnitude between frames t and t+1 stands in for the joint speed. The flow
version is a weight-free proxy of our own, not a published metric: it is comparable only with itself.

Audio at fps·512 Hz is decoded with `avtool.media.load_audio` (soxr HQ). Bailando loaded with essentia's resampler,
so its beat frames can differ by a frame on the same file.

Defined values where the references fail: no motion beats → 0.0 (mint's rule; Bailando's code raises); no music
beats → None with the reason "no music beats" (both references raise or divide by zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGMA = 3.0  # frames
BAILANDO_SMOOTHING = 5  # gaussian_filter sigma, frames
FACT_ORDER_AT_60FPS = 10
ONSET_HOP = 512
DIRECTIONS = ("bailando", "fact")


@dataclass(frozen=True)
class BeatAlignment:
    """One BAS value (None when undefined, see `reason`) with the beats it was computed from, in motion frames."""

    direction: str
    score: float | None
    music_beats: np.ndarray
    motion_beats: np.ndarray
    reason: str | None = None


def music_sample_rate(fps: float) -> int:
    """The audio rate at which hop 512 gives one onset frame per motion frame (30720 Hz at 60 fps)."""
    return round(fps * ONSET_HOP)


def music_beats(y: np.ndarray, sr: int, fps: float, direction: str) -> np.ndarray:
    """Beat positions in motion frames of mono `y` at `sr` (use `music_sample_rate(fps)`), as `direction` computes them."""
    import librosa

    if direction == "bailando":
        percussive = librosa.effects.hpss(y)[1]
        envelope = librosa.onset.onset_strength(y=percussive, sr=sr, aggregate=np.median)
        frames = librosa.beat.beat_track(onset_envelope=envelope, sr=sr)[1]
    elif direction == "fact":
        envelope = librosa.onset.onset_strength(y=y, sr=sr)
        frames = librosa.beat.beat_track(onset_envelope=envelope, sr=sr, hop_length=ONSET_HOP, tightness=100)[1]
    else:
        raise ValueError(f"unknown BAS direction {direction!r}")
    if sr == fps * ONSET_HOP:
        return frames.astype(np.int64)
    return np.round(frames * ONSET_HOP / sr * fps).astype(np.int64)


def joint_speed(joints: np.ndarray) -> np.ndarray:
    """Bailando's kinetic velocity: mean over joints of the displacement between frames t and t+1, length T-1."""
    joints = np.asarray(joints)
    return np.mean(np.sqrt(np.sum((joints[1:] - joints[:-1]) ** 2, axis=2)), axis=1)


def joint_envelope(joints: np.ndarray) -> np.ndarray:
    """FACT's velocity envelope: float32 sum over joints of the displacement from frame t-1 to t, 0 at t = 0, length T."""
    joints = np.asarray(joints)
    velocity = np.zeros_like(joints, dtype=np.float32)
    velocity[1:] = joints[1:] - joints[:-1]
    return np.sum(np.linalg.norm(velocity, axis=2), axis=1)


def bas_bailando(speed: np.ndarray, beats: np.ndarray) -> BeatAlignment:
    """Bailando's BAS from the T-1 frame speed curve and music beats (motion frames): mean over music beats."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import argrelextrema

    smoothed = gaussian_filter(np.asarray(speed, dtype=np.float64), BAILANDO_SMOOTHING)
    motion = argrelextrema(smoothed, np.less)[0]
    beats = beats[beats < len(speed)]
    if len(beats) == 0:
        return BeatAlignment("bailando", None, beats, motion, reason="no music beats")
    if len(motion) == 0:
        return BeatAlignment("bailando", 0.0, beats, motion)
    nearest = np.min((motion[None, :] - beats[:, None]) ** 2, axis=1)
    return BeatAlignment("bailando", float(np.mean(np.exp(-nearest / 2 / SIGMA**2))), beats, motion)


def bas_fact(envelope: np.ndarray, beats: np.ndarray, fps: float) -> BeatAlignment:
    """FACT's BAS from the T frame velocity envelope and music beats (motion frames): mean over motion beats."""
    from scipy.signal import argrelextrema

    order = max(1, round(FACT_ORDER_AT_60FPS * fps / 60))
    motion = argrelextrema(np.asarray(envelope), np.less, axis=0, order=order)[0]
    beats = beats[beats < len(envelope)]
    if len(beats) == 0:
        return BeatAlignment("fact", None, beats, motion, reason="no music beats")
    if len(motion) == 0:
        return BeatAlignment("fact", 0.0, beats, motion)
    distances = np.abs(beats[None, :] - motion[:, None]).astype(np.float32).min(axis=1)
    scores = np.exp(-(distances**2) / 2 / np.float32(SIGMA) ** 2)
    return BeatAlignment("fact", float(np.sum(scores, dtype=np.float32) / len(scores)), beats, motion)


def flow_speed(curve: np.ndarray) -> np.ndarray:
    """The flow analogue of `joint_speed`: flow(t→t+1) for t = 0..N-2 (the motion curve without its repeated head)."""
    return np.asarray(curve, dtype=np.float64)[1:]


def flow_envelope(curve: np.ndarray) -> np.ndarray:
    """The flow analogue of `joint_envelope`: 0 at t = 0, then flow(t-1→t), float32, length N."""
    return np.concatenate([[0.0], np.asarray(curve)[1:]]).astype(np.float32)
