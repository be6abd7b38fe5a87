"""Kaldi log-mel filterbank in torch (torchaudio is not a dependency), and BEATs' input normalisation."""

from __future__ import annotations

import math

import torch

FBANK_MEAN = 15.41663  # BEATs' preprocess constants (dataset statistics of its fbank)
FBANK_STD = 6.55582
PCM_SCALE = 2**15  # BEATs feeds Kaldi int16-scaled samples
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
POVEY_POWER = 0.85


def kaldi_fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0) -> torch.Tensor:
    """Log-mel energies (..., frames, mel) of `waveform` (..., samples), equal to `torchaudio.compliance.kaldi.fbank`
    with its defaults: no dither, only whole frames (`snip_edges`: 1 + (N - length) // shift of them, none when N is
    shorter than a frame), DC offset removed per frame, pre-emphasis 0.97 (the first sample against itself), Povey
    window, FFT size rounded up to a power of two, power spectrum, Kaldi mel banks from 20 Hz to Nyquist, natural log
    floored at float32 epsilon. Computed in the waveform's dtype, as torchaudio does."""
    length, shift = _frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if waveform.shape[-1] < length:
        return waveform.new_zeros((*waveform.shape[:-1], 0, num_mel_bins))
    frames = waveform.unfold(-1, length, shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(length, periodic=False, dtype=waveform.dtype, device=waveform.device).pow(POVEY_POWER)
    fft_size = 1 << (length - 1).bit_length()
    power = torch.fft.rfft(frames * window, n=fft_size).abs().pow(2.0)
    banks = kaldi_mel_banks(num_mel_bins, fft_size, sample_rate).to(device=waveform.device, dtype=waveform.dtype)
    energies = power @ banks.T
    return energies.clamp_min(torch.finfo(torch.float32).eps).log()


def kaldi_mel_banks(num_mel_bins: int, fft_size: int, sample_rate: int) -> torch.Tensor:
    """Kaldi's triangular filters (num_mel_bins, fft_size // 2 + 1) on the mel scale 1127 ln(1 + f / 700), edges spaced
    evenly from 20 Hz to Nyquist; the Nyquist bin gets no weight. Float32 arithmetic, as torchaudio's."""
    mel_low, mel_high = _mel(LOW_FREQ), _mel(sample_rate / 2)
    step = (mel_high - mel_low) / (num_mel_bins + 1)
    edges = mel_low + torch.arange(num_mel_bins + 2, dtype=torch.float32)[:, None] * step
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    mel = 1127.0 * (1.0 + sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float32) / 700.0).log()
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    banks = torch.minimum(rising, falling).clamp_min(0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def _mel(frequency: float) -> float:
    return 1127.0 * math.log(1.0 + frequency / 700.0)


def beats_input(waveform_16k: torch.Tensor) -> torch.Tensor:
    """BEATs' preprocess: (B, N) 16 kHz samples in [-1, 1] → normalised fbank (B, frames, 128), float32."""
    fbank = kaldi_fbank(waveform_16k.float() * PCM_SCALE)
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


def num_frames(num_samples: int, sample_rate: int = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> int:
    """How many fbank frames `kaldi_fbank` makes of `num_samples` samples (whole frames only)."""
    length, shift = _frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if num_samples < length else 1 + (num_samples - length) // shift


def _frame_sizes(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    """Frame length and shift in samples, by torchaudio's expression (rate * ms * 0.001, truncated)."""
    return int(sample_rate * frame_length_ms * 0.001), int(sample_rate * frame_shift_ms * 0.001)
