"""Block-wise BS.1770 loudness against pyloudnorm, and normalize_loudness against its former pyloudnorm-based version."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyloudnorm
import pytest

from avtool.analysis.loudness import block_mean_squares, gating_blocks, integrated_loudness, normalize_loudness

RATES = [32_000, 44_100, 48_000, 11_025]  # at 11.025 kHz a hop is 1102.5 samples: pyloudnorm's bounds are irregular
LENGTHS_SECONDS = [
    3.0,  # a whole number of hops
    3.0 + 0.0123,  # not a whole number of hops
    0.55,  # 1.5 hops past one block: the count rounds up to 3 blocks, the last runs past the end
    0.45,  # 0.5 hop past one block: the count rounds (half to even) down to 1 block
    0.4,  # exactly one block
]


def noise(num_samples: int, rate: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(num_samples).standard_normal(num_samples)).astype(np.float32)


def tone(num_samples: int, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(num_samples) / rate)).astype(np.float32)


def with_gaps(num_samples: int, rate: int) -> np.ndarray:
    """Loud noise, digital silence (below the absolute gate) and a quiet tone 30 dB down (below the relative gate)."""
    samples = noise(num_samples, rate)
    samples[num_samples // 4: num_samples // 2] = 0.0
    samples[num_samples // 2: 3 * num_samples // 4] = tone(3 * num_samples // 4 - num_samples // 2, rate) * 0.03
    return samples


SIGNALS = [noise, tone, with_gaps]


def pyloudnorm_loudness(samples: np.ndarray, rate: int) -> float:
    return pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))


def pyloudnorm_normalize(samples: np.ndarray, rate: int, target_lufs: float = -16.0, soft_clip: bool = True) -> np.ndarray:
    """normalize_loudness as it was before the block-wise meter."""
    samples = np.asarray(samples, dtype=np.float32)
    if float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < 2e-3:
        return samples
    gain = 1.0
    if len(samples) >= int(0.4 * rate):
        loudness = pyloudnorm_loudness(samples, rate)
        if np.isfinite(loudness):
            gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    out = samples * np.float32(gain)
    return np.tanh(out).astype(np.float32) if soft_clip else out


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("seconds", LENGTHS_SECONDS)
@pytest.mark.parametrize("signal", SIGNALS, ids=lambda f: f.__name__)
def test_integrated_loudness_equals_pyloudnorm(signal, seconds: float, rate: int) -> None:
    samples = signal(int(seconds * rate), rate)
    meter = pyloudnorm.Meter(rate)
    expected = meter.integrated_loudness(samples.astype(np.float64))

    assert integrated_loudness(samples, rate) == pytest.approx(expected, abs=1e-6)
    blocks = -0.691 + 10.0 * np.log10(block_mean_squares(samples, rate))
    np.testing.assert_allclose(blocks, meter.blockwise_loudness, rtol=0, atol=1e-6)


def test_gating_matters_in_the_gapped_signal() -> None:
    rate = 32_000
    samples = with_gaps(10 * rate, rate)
    ungated = -0.691 + 10.0 * np.log10(np.mean(block_mean_squares(samples, rate)))
    assert integrated_loudness(samples, rate) - ungated > 2.0


@pytest.mark.parametrize("rate", [32_000, 44_100])
def test_block_bounds_are_pyloudnorms_over_ten_minutes(rate: int) -> None:
    """The bounds are float products truncated to samples; check them where the float error is largest."""
    num_samples = 600 * rate + 777
    starts, ends = gating_blocks(num_samples, rate)
    duration = num_samples / rate
    num_blocks = int(np.round((duration - 0.4) / (0.4 * 0.25))) + 1
    assert len(starts) == num_blocks
    assert [int(0.4 * (j * 0.25) * rate) for j in range(num_blocks)] == starts.tolist()
    assert [min(int(0.4 * (j * 0.25 + 1) * rate), num_samples) for j in range(num_blocks)] == ends.tolist()


@pytest.mark.parametrize("samples", [np.zeros(32_000, np.float32), np.full(32_000, 1e-5, np.float32)], ids=["zeros", "dc"])
def test_everything_gated_away_is_minus_infinity(samples: np.ndarray) -> None:
    assert integrated_loudness(samples, 32_000) == pyloudnorm_loudness(samples, 32_000) == float("-inf")


def test_published_reference_one_kilohertz_sine() -> None:
    """BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LKFS; at -20 dBFS, -23.01. pyloudnorm's suite allows 0.1 LU
    on the BS.2217 compliance signals (its RBJ-cookbook K-weighting reads this one at -23.05)."""
    rate = 48_000
    samples = (0.1 * np.sin(2 * np.pi * 1000.0 * np.arange(10 * rate) / rate)).astype(np.float32)
    assert integrated_loudness(samples, rate) == pytest.approx(-23.01, abs=0.1)


def low_rumble(num_samples: int, rate: int) -> np.ndarray:
    """RMS above the energy floor, but the K-weighting's 38 Hz high pass leaves it below the absolute gate."""
    return (0.01 * np.sin(2 * np.pi * 1.0 * np.arange(num_samples) / rate)).astype(np.float32)


def loud_noise(num_samples: int, rate: int) -> np.ndarray:
    return noise(num_samples, rate) * np.float32(8.0)  # -16 LUFS needs a gain below 1, and tanh clips the peaks


NORMALIZE_CASES = [
    (noise, 5.0, 32_000),
    (tone, 2.3, 44_100),
    (with_gaps, 4.0, 48_000),
    (loud_noise, 1.0, 32_000),
    (noise, 0.3, 32_000),  # shorter than one block: soft clip only
    (low_rumble, 3.0, 32_000),  # loudness -inf: soft clip only
    (lambda n, rate: noise(n, rate) * np.float32(1e-3), 1.0, 32_000),  # below the energy floor: unchanged
]


@pytest.mark.parametrize("soft_clip", [True, False])
@pytest.mark.parametrize(("signal", "seconds", "rate"), NORMALIZE_CASES)
def test_normalize_loudness_equals_pyloudnorm_version(signal, seconds: float, rate: int, soft_clip: bool) -> None:
    samples = signal(int(seconds * rate), rate)
    expected = pyloudnorm_normalize(samples.copy(), rate, soft_clip=soft_clip)

    result = normalize_loudness(samples, rate, soft_clip=soft_clip)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_normalize_loudness_reaches_target() -> None:
    rate = 32_000
    result = normalize_loudness(noise(5 * rate, rate), rate, target_lufs=-23.0, soft_clip=False)
    assert integrated_loudness(result, rate) == pytest.approx(-23.0, abs=1e-4)


def test_float32_input_is_normalised_in_place_unless_asked_not_to() -> None:
    rate = 32_000
    samples = noise(rate, rate)
    original = samples.copy()

    kept = normalize_loudness(samples, rate, in_place=False)
    assert kept is not samples and np.array_equal(samples, original)

    result = normalize_loudness(samples, rate)
    assert result is samples and np.array_equal(result, kept)


def test_read_only_and_float64_inputs_are_left_as_they_are() -> None:
    rate = 32_000
    read_only = noise(rate, rate)
    read_only.flags.writeable = False
    as_float64 = read_only.astype(np.float64)

    expected = pyloudnorm_normalize(read_only, rate)
    np.testing.assert_allclose(normalize_loudness(read_only, rate), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(normalize_loudness(as_float64, rate), expected, rtol=0, atol=1e-6)
    assert np.array_equal(as_float64, read_only.astype(np.float64))


def test_peak_memory_is_flat_in_the_length() -> None:
    """Ten minutes at 32 kHz (73 MB of float32): beyond the waveform itself, only chunks and per-block floats."""
    rate = 32_000
    samples = np.random.default_rng(0).standard_normal(600 * rate, dtype=np.float32) * np.float32(0.1)
    tracemalloc.start()
    try:
        normalize_loudness(samples, rate)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nnormalize_loudness peak allocation over a {samples.nbytes / 2**20:.1f} MiB waveform: {peak / 2**20:.2f} MiB")
    assert samples.nbytes + peak < 1.5 * samples.nbytes
    assert peak < 0.05 * samples.nbytes
