"""Loudness normalisation as audiocraft's `audio_write(strategy="loudness")` does it (ITU-R BS.1770 as pyloudnorm measures it).

The integrated loudness is computed here block-wise rather than with `pyloudnorm.Meter.integrated_loudness`, which holds
several float64 copies of the whole waveform (about 480 MB for 10 minutes at 32 kHz). The result is pyloudnorm's: the same
K-weighting biquads (its RBJ-cookbook designs), the same gating blocks (count and sample bounds) and the same gates; only
float64 rounding differs. Memory beyond the waveform itself is a few one-second chunks and one float per gating block.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.signal import lfilter

ENERGY_FLOOR = 2e-3  # audiocraft leaves near-silent audio as it is
BLOCK_SECONDS = 0.4  # BS.1770 gating block
BLOCK_OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
LOUDNESS_OFFSET = -0.691  # BS.1770 eq. 2: a 1 kHz sine reads its own RMS level
CHUNK_SECONDS = 1.0  # samples filtered at a time
RMS_CHUNK = 1 << 16  # samples squared at a time

Biquad = tuple[np.ndarray, np.ndarray]


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float = -16.0, soft_clip: bool = True, *,
                       in_place: bool = True) -> np.ndarray:
    """Scale mono float32 `samples` to `target_lufs` integrated loudness, then soft-clip with tanh.

    audiocraft `normalize_loudness(wav, sr, loudness_headroom_db=16, loudness_compressor=True)`: audio whose RMS is
    below 2e-3 is returned unchanged; audio too short for one 400 ms gating block is only soft-clipped; audio whose
    loudness is not finite (everything gated away) is only soft-clipped.

    A float32 array is scaled and clipped in place and returned (the pipeline owns its decoded waveform, and a copy
    would be as large as the input); `in_place=False` works on a copy and leaves the caller's array as it was. Other
    dtypes, and read-only arrays, are converted to a new float32 array first.
    """
    original = samples
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"normalize_loudness takes mono samples, got shape {samples.shape}")
    if root_mean_square(samples) < ENERGY_FLOOR:
        return samples
    if not samples.flags.writeable or (not in_place and np.may_share_memory(samples, original)):
        samples = samples.copy()
    gain = loudness_gain(samples, sample_rate, target_lufs)
    if gain != 1.0:
        samples *= np.float32(gain)
    if soft_clip:
        np.tanh(samples, out=samples)
    return samples


def loudness_gain(samples: np.ndarray, sample_rate: int, target_lufs: float) -> float:
    """The linear gain that brings `samples` to `target_lufs`; 1 when they are too short or their loudness is not finite."""
    if len(samples) < int(BLOCK_SECONDS * sample_rate):
        return 1.0
    loudness = integrated_loudness(samples, sample_rate)
    return 10.0 ** ((target_lufs - loudness) / 20.0) if np.isfinite(loudness) else 1.0


def root_mean_square(samples: np.ndarray) -> float:
    """RMS in float64, without a float64 copy of the whole array."""
    energy = sum(float(np.sum(np.square(samples[i:i + RMS_CHUNK], dtype=np.float64))) for i in range(0, len(samples), RMS_CHUNK))
    return float(np.sqrt(energy / max(len(samples), 1)))


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float:
    """pyloudnorm's `Meter(sample_rate).integrated_loudness(samples)` for mono samples (at least one block long), in LUFS."""
    return gated_loudness(block_mean_squares(samples, sample_rate))


def gated_loudness(mean_squares: np.ndarray) -> float:
    """BS.1770 eq. 7: the loudness of the blocks above the absolute gate and above the relative gate; -inf if none are."""
    loudness = block_loudness(mean_squares)
    above_absolute = loudness >= ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return float("-inf")
    relative_gate = block_loudness(np.mean(mean_squares[above_absolute])) + RELATIVE_GATE_LU
    # pyloudnorm's second pass is strict on both gates, the first one is not
    selected = (loudness > relative_gate) & (loudness > ABSOLUTE_GATE_LUFS)
    if not selected.any():
        return float("-inf")
    return float(block_loudness(np.mean(mean_squares[selected])))


def block_loudness(mean_square: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return LOUDNESS_OFFSET + 10.0 * np.log10(mean_square)


def block_mean_squares(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The mean square of the K-weighted signal in each of pyloudnorm's gating blocks (its `z[0, j]`)."""
    starts, ends = gating_blocks(len(samples), sample_rate)
    if len(starts) == 0:
        return np.zeros(0)
    bounds = np.unique(np.concatenate([starts, ends]))
    piece_energies = energies_between(samples[:bounds[-1]], sample_rate, bounds)
    # a block is the run of pieces from its start bound to its end bound; reduceat sums each [first, last) pair at even
    # positions, and the appended zero keeps `last` a valid index for blocks that end at the last bound
    first, last = np.searchsorted(bounds, starts), np.searchsorted(bounds, ends)
    block_energies = np.add.reduceat(np.append(piece_energies, 0.0), np.column_stack([first, last]).ravel())[::2]
    # pyloudnorm divides by the nominal block length, also for a last block cut short by the end of the signal
    return block_energies * (1.0 / (BLOCK_SECONDS * sample_rate))


def gating_blocks(num_samples: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end samples of pyloudnorm's gating blocks.

    Its arithmetic, kept as is: the block count is rounded (half to even), so a length that is not a whole number of
    hops gets one more or one fewer block than fits, and the last block may run past the end (it is cut there); the
    bounds are the float products `0.4 * (j * 0.25) * rate` truncated, which are not always `j * hop`.
    """
    step = 1.0 - BLOCK_OVERLAP
    duration = num_samples / sample_rate
    num_blocks = int(np.round((duration - BLOCK_SECONDS) / (BLOCK_SECONDS * step))) + 1
    j = np.arange(max(num_blocks, 0))
    starts = (BLOCK_SECONDS * (j * step) * sample_rate).astype(np.int64)
    ends = (BLOCK_SECONDS * (j * step + 1) * sample_rate).astype(np.int64)
    return np.minimum(starts, num_samples), np.minimum(ends, num_samples)


def energies_between(samples: np.ndarray, sample_rate: int, bounds: np.ndarray) -> np.ndarray:
    """Sum of squares of the K-weighted `samples` between each pair of consecutive `bounds` (sorted, from 0 to the end)."""
    energies = np.zeros(len(bounds) - 1)
    for offset, weighted in k_weighted_chunks(samples, sample_rate):
        lo = np.searchsorted(bounds, offset, side="right")
        hi = np.searchsorted(bounds, offset + len(weighted), side="left")
        cuts = np.concatenate([[offset], bounds[lo:hi]]) - offset
        energies[lo - 1:hi] += np.add.reduceat(np.square(weighted), cuts)
    return energies


def k_weighted_chunks(samples: np.ndarray, sample_rate: int) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, float64 K-weighted chunk) for consecutive chunks; the filter states carry over, so the chunks join up
    into exactly what filtering the whole signal at once gives."""
    filters = k_weighting(sample_rate)
    states = [np.zeros(2) for _ in filters]
    chunk = max(int(CHUNK_SECONDS * sample_rate), 1)
    for offset in range(0, len(samples), chunk):
        weighted = samples[offset:offset + chunk].astype(np.float64)
        for i, (b, a) in enumerate(filters):
            weighted, states[i] = lfilter(b, a, weighted, zi=states[i])
        yield offset, weighted


def k_weighting(sample_rate: int) -> list[Biquad]:
    """pyloudnorm's "K-weighting" stages in its order: the head's high shelf, then the RLB high pass."""
    return [high_shelf(4.0, 1 / np.sqrt(2), 1500.0, sample_rate), high_pass(0.5, 38.0, sample_rate)]


def high_shelf(gain_db: float, q: float, corner_hz: float, sample_rate: int) -> Biquad:
    """RBJ cookbook high shelf, with pyloudnorm's `IIRfilter.generate_coefficients` arithmetic (normalised by a0)."""
    A = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (corner_hz / sample_rate)
    alpha = np.sin(w0) / (2.0 * q)
    b0 = A * ((A + 1) + (A - 1) * np.cos(w0) + 2 * np.sqrt(A) * alpha)
    b1 = -2 * A * ((A - 1) + (A + 1) * np.cos(w0))
    b2 = A * ((A + 1) + (A - 1) * np.cos(w0) - 2 * np.sqrt(A) * alpha)
    a0 = (A + 1) - (A - 1) * np.cos(w0) + 2 * np.sqrt(A) * alpha
    a1 = 2 * ((A - 1) - (A + 1) * np.cos(w0))
    a2 = (A + 1) - (A - 1) * np.cos(w0) - 2 * np.sqrt(A) * alpha
    return np.array([b0, b1, b2]) / a0, np.array([a0, a1, a2]) / a0


def high_pass(q: float, corner_hz: float, sample_rate: int) -> Biquad:
    """RBJ cookbook high pass, with pyloudnorm's arithmetic (normalised by a0)."""
    w0 = 2.0 * np.pi * (corner_hz / sample_rate)
    alpha = np.sin(w0) / (2.0 * q)
    b0 = (1 + np.cos(w0)) / 2
    b1 = -(1 + np.cos(w0))
    b2 = (1 + np.cos(w0)) / 2
    a0 = 1 + alpha
    a1 = -2 * np.cos(w0)
    a2 = 1 - alpha
    return np.array([b0, b1, b2]) / a0, np.array([a0, a1, a2]) / a0
