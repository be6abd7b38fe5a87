"""Loudness normalisation as audiocraft's `audio_write(strategy="loudness")` does it (ITU-R BS.1770 via pyloudnorm)."""

from __future__ import annotations

import numpy as np

ENERGY_FLOOR = 2e-3  # audiocraft leaves near-silent audio as it is


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float = -16.0, soft_clip: bool = True) -> np.ndarray:
    """Scale mono float32 `samples` to `target_lufs` integrated loudness, then soft-clip with tanh.

    audiocraft `normalize_loudness(wav, sr, loudness_headroom_db=16, loudness_compressor=True)`: audio whose RMS is
    below 2e-3 is returned unchanged; audio too short for one 400 ms gating block is only soft-clipped.
    """
    import pyloudnorm

    samples = np.asarray(samples, dtype=np.float32)
    if float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < ENERGY_FLOOR:
        return samples
    gain = 1.0
    if len(samples) >= int(0.4 * sample_rate):
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(samples.astype(np.float64))
        if np.isfinite(loudness):
            gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    out = samples * np.float32(gain)
    return np.tanh(out).astype(np.float32) if soft_clip else out
