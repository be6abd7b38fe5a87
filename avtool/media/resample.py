"""torchaudio's windowed-sinc resampler in numpy, on a whole signal or on a window of it.

MusicInfuser's `inference.py` feeds wav2vec2 with `torchaudio.transforms.Resample(sr, 16000)` applied to the
whole song (44.1 kHz after moviepy's re-encode), then crops the excerpt. torchaudio cannot be installed beside
CPU torch, so this module reproduces that resampler (method "sinc_interp_hann", the defaults
`lowpass_filter_width=6, rolloff=0.99`) without torch:

- rates are reduced by their gcd to `orig`/`new`; the cutoff is `base = min(orig, new) * rolloff`;
- each output phase p in [0, new) has a kernel over `2*width + orig` input taps, `width = ceil(lw*orig/base)`:
  `t = clamp((k - width)/orig - p/new, ±lw/base) * base`, `kernel = sinc(pi t) * cos(pi t / (2 lw))**2 * base/orig`;
- the signal gets `width` zeros on the left and `width + orig` on the right, the kernels slide with stride
  `orig`, and the output is cut to `ceil(new * length / orig)` samples.

The kernel is computed as `transforms.Resample` computes it (no `dtype`): float64, except that `p/new` is a float32
division (torch's int64 arange divided by an int), then cast to float32. The taps are summed in float64 (products
of float32 values are exact there) and rounded once to float32, so every output sample is the same whether it
is computed from the whole signal or from a window of it.
"""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=16)
def sinc_kernel(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int, int, int]:
    """(kernel (new, 2*width + orig) float32 read-only, width, orig, new) with orig/new reduced by their gcd."""
    if orig_sr <= 0 or new_sr <= 0 or int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} and {new_sr}")
    if lowpass_filter_width <= 0:
        raise ValueError("lowpass_filter_width must be positive")
    gcd = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // gcd, int(new_sr) // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    taps = np.arange(-width, width + orig, dtype=np.float64) / orig
    phases = np.arange(0, -new, -1).astype(np.float32) / np.float32(new)  # float32 in torchaudio too
    t = (phases.astype(np.float64)[:, None] + taps[None, :]) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (sinc * (window * (base / orig))).astype(np.float32)
    kernel.flags.writeable = False
    return kernel, width, orig, new


@functools.lru_cache(maxsize=16)
def _supports(orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float) -> tuple[tuple[int, int], ...]:
    """For each kernel phase, the tap range [k0, k1) outside which its float32 taps are exactly zero."""
    nonzero = sinc_kernel(orig_sr, new_sr, lowpass_filter_width, rolloff)[0] != 0
    return tuple((int(np.argmax(row)), len(row) - int(np.argmax(row[::-1]))) if row.any() else (0, 0) for row in nonzero)


def resampled_length(length: int, orig_sr: int, new_sr: int) -> int:
    """Output length of `sinc_resample` for `length` input samples: ceil(new*length/orig), as torchaudio rounds it.

    torchaudio takes the ceiling after converting the float division to a float32 tensor; beyond 2**23 output
    samples (8.7 minutes at 16 kHz) that can drop the last sample. This is reproduced too.
    """
    if orig_sr == new_sr:
        return length
    gcd = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // gcd, int(new_sr) // gcd
    return int(np.ceil(np.float32(new * length / orig)))


def sinc_resample(samples: np.ndarray, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99) -> np.ndarray:
    """`torchaudio.transforms.Resample(orig_sr, new_sr)(samples)` along the last axis, float32.

    Equal rates return the samples unchanged (as float32), as torchaudio does.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == new_sr:
        return samples.copy()
    return sinc_resample_window(samples, 0, 0, resampled_length(samples.shape[-1], orig_sr, new_sr),
                                orig_sr, new_sr, samples.shape[-1], lowpass_filter_width, rolloff)


def sinc_window_bounds(first: int, count: int, orig_sr: int, new_sr: int, length: int,
                       lowpass_filter_width: int = 6, rolloff: float = 0.99) -> tuple[int, int]:
    """Input samples [lo, hi), within [0, length), that output samples [first, first+count) depend on.

    Decode that window of the signal and pass it to `sinc_resample_window`.
    """
    if first < 0 or count < 0:
        raise ValueError("first and count must not be negative")
    if orig_sr == new_sr:
        return min(first, length), min(first + count, length)
    _, width, orig, new = sinc_kernel(orig_sr, new_sr, lowpass_filter_width, rolloff)
    count = max(0, min(first + count, resampled_length(length, orig_sr, new_sr)) - first)
    if count == 0:
        return 0, 0
    # Output j is kernel phase j % new applied at padded offset (j // new) * orig, i.e. to input samples
    # [(j // new) * orig - width, (j // new) * orig + width + orig).
    lo = (first // new) * orig - width
    hi = ((first + count - 1) // new) * orig + width + orig
    return max(lo, 0), min(hi, length)


def sinc_resample_window(window: np.ndarray, lo: int, first: int, count: int, orig_sr: int, new_sr: int,
                         length: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """`sinc_resample(signal)[..., first:first+count]`, computed from `window = signal[..., lo:lo+n]` only.

    `length` is the whole signal's length: the zeros torchaudio pads at its start and end are reproduced, and the
    result is shorter than `count` where the resampled signal ends, exactly like the slice. The window must cover
    `sinc_window_bounds(first, count, ...)`; more is fine.
    """
    window = np.asarray(window, dtype=np.float32)
    need_lo, need_hi = sinc_window_bounds(first, count, orig_sr, new_sr, length, lowpass_filter_width, rolloff)
    if need_hi > need_lo and (lo > need_lo or lo + window.shape[-1] < need_hi):
        raise ValueError(f"window [{lo}, {lo + window.shape[-1]}) does not cover input samples [{need_lo}, {need_hi})")
    if orig_sr == new_sr:
        return window[..., need_lo - lo:need_hi - lo].copy()
    kernel, width, orig, new = sinc_kernel(orig_sr, new_sr, lowpass_filter_width, rolloff)
    count = max(0, min(first + count, resampled_length(length, orig_sr, new_sr)) - first)
    lead = window.shape[:-1]
    if count == 0:
        return np.zeros((*lead, 0), dtype=np.float32)

    frame0, frame1 = first // new, (first + count - 1) // new + 1
    start = frame0 * orig - width  # signal index of the first padded sample used
    taps = kernel.shape[1]
    padded = np.zeros((*lead, (frame1 - frame0 - 1) * orig + taps), dtype=np.float32)
    padded[..., need_lo - start:need_hi - start] = window[..., need_lo - lo:need_hi - lo]

    # out[f*new + p] = sum over taps k of padded[f*orig + k] * kernel[p, k], summed in float64 in increasing k
    # (elementwise, so the result does not depend on the window); taps outside a phase's support are exactly 0.
    frames = frame1 - frame0
    kernel64 = kernel.astype(np.float64)
    acc = np.zeros((*lead, new, frames), dtype=np.float64)
    for p, (k0, k1) in enumerate(_supports(orig_sr, new_sr, lowpass_filter_width, rolloff)):
        row = acc[..., p, :]
        for k in range(k0, k1):
            row += np.multiply(padded[..., k:k + (frames - 1) * orig + 1:orig], kernel64[p, k], dtype=np.float64)
    out = np.swapaxes(acc, -1, -2).astype(np.float32).reshape(*lead, -1)
    skip = first - frame0 * new
    return np.ascontiguousarray(out[..., skip:skip + count])
