"""avtool.media.resample: torchaudio's sinc_interp_hann resampler, whole and windowed, against the published formula."""

import math

import numpy as np
import pytest

from avtool.media.resample import (
    resampled_length,
    sinc_kernel,
    sinc_resample,
    sinc_resample_window,
    sinc_window_bounds,
)

PAIRS = [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000)]


def direct_resample(x: np.ndarray, orig_sr: int, new_sr: int, float32_phase: bool, lw: int = 6,
                    rolloff: float = 0.99) -> np.ndarray:
    """y[j] = sum_i x[i] h(i/orig - j/new), h(tau) = (fc/orig) sinc(fc tau) cos^2(pi fc tau / 2lw) for |fc tau| <= lw,
    with rates reduced by their gcd, fc = rolloff * min(orig, new) and x = 0 outside the signal; float64, O(n_out * n_in).

    Writing j = f*new + p, j/new = f + p/new; torchaudio computes p/new as a float32 division (`float32_phase`).
    """
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    j = np.arange(-(-new * x.shape[-1] // orig))
    phase = (np.float32(j % new) / np.float32(new)).astype(np.float64) if float32_phase else (j % new) / new
    tau = np.arange(x.shape[-1])[None, :] / orig - (j // new + phase)[:, None]
    fc = rolloff * min(orig, new)
    t = np.clip(fc * tau, -lw, lw)
    h = np.sinc(t) * np.cos(np.pi * t / (2 * lw)) ** 2 * fc / orig
    return x.astype(np.float64) @ h.T


def song(n: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((channels, n)) * 0.3, -1, 1).astype(np.float32)


@pytest.mark.parametrize("orig_sr,new_sr", PAIRS)
def test_matches_formula(orig_sr, new_sr):
    x = song(orig_sr // 25 + 13)
    y = sinc_resample(x, orig_sr, new_sr)
    assert y.dtype == np.float32
    assert y.shape == (2, math.ceil(new_sr * x.shape[-1] / orig_sr))
    np.testing.assert_allclose(y, direct_resample(x, orig_sr, new_sr, float32_phase=True), rtol=0, atol=1e-7)
    # torchaudio's float32 phase moves the result off the exact formula by up to about 1e-5 (44.1 and 22.05 kHz).
    np.testing.assert_allclose(y, direct_resample(x, orig_sr, new_sr, float32_phase=False), rtol=0, atol=2e-5)


def test_kernel_shape_and_one_dimensional_input():
    kernel, width, orig, new = sinc_kernel(44100, 16000)
    assert (orig, new, width) == (441, 160, math.ceil(6 * 441 / (160 * 0.99)))
    assert kernel.shape == (160, 2 * width + 441) and kernel.dtype == np.float32
    x = song(1000, channels=1)
    np.testing.assert_array_equal(sinc_resample(x[0], 44100, 16000), sinc_resample(x, 44100, 16000)[0])


def test_equal_rates_is_identity():
    x = song(1234)
    y = sinc_resample(x, 16000, 16000)
    np.testing.assert_array_equal(y, x)
    assert y is not x


def test_lengths():
    assert resampled_length(441, 44100, 16000) == 160
    assert resampled_length(442, 44100, 16000) == 161
    assert resampled_length(3, 48000, 16000) == 1 and resampled_length(4, 48000, 16000) == 2
    # torchaudio takes the ceiling in float32: above 2**23 outputs the last sample can be lost.
    assert resampled_length(46242001, 44100, 16000) == 16777143 == math.ceil(160 * 46242001 / 441) - 1


@pytest.mark.parametrize("orig_sr,new_sr", PAIRS)
def test_window_equals_whole(orig_sr, new_sr):
    x = song(orig_sr + 777, seed=1)
    whole = sinc_resample(x, orig_sr, new_sr)
    n = whole.shape[-1]
    for first, count in [(0, 5000), (0, 1), (7777, 4321), (n // 2 + 3, 1), (n - 1000, 5000), (n - 1, 1), (n + 5, 10)]:
        lo, hi = sinc_window_bounds(first, count, orig_sr, new_sr, x.shape[-1])
        for margin in (0, 9):
            a, b = max(0, lo - margin), min(x.shape[-1], hi + margin)
            got = sinc_resample_window(x[:, a:b], a, first, count, orig_sr, new_sr, x.shape[-1])
            ref = whole[:, first:first + count]
            assert got.shape == ref.shape and got.dtype == np.float32
            assert np.array_equal(got, ref), (first, count, margin)


def test_window_bounds():
    length = 44100 * 3
    lo, hi = sinc_window_bounds(0, 100, 44100, 16000, length)
    assert lo == 0 and 0 < hi < 1000
    lo, hi = sinc_window_bounds(16000, 16000, 44100, 16000, length)
    assert lo < 44100 < 88200 < hi and hi - lo < 44100 + 100
    assert sinc_window_bounds(47000, 5000, 44100, 16000, length)[1] == length
    with pytest.raises(ValueError, match="does not cover"):
        x = song(length, channels=1)[0]
        sinc_resample_window(x[lo + 1:hi], lo + 1, 16000, 16000, 44100, 16000, length)
