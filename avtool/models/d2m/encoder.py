"""The audio encoder of archisound's `dmae1d-ATC32-v3`, the diffusion autoencoder (DMAE) whose latents
Dance2Music-Diffusion generates: audio-encoders-pytorch 0.0.22's `MelE1d` with a tanh bottleneck. Inference only,
upstream's state-dict names (the published checkpoint keeps them under `model.encoder.`).

Stereo 48 kHz audio (B, 2, T) → each channel reflect-padded by (n_fft − hop) / 2 at both ends → |STFT| (periodic
Hann window, no centring) → HTK mel filterbank → log(max(·, 1e-5)) → both channels' mel bands stacked, (B, 2·80,
T / 256) → a resnet block to 512 channels → a stride-2 conv (kernel 5) and 12 resnet blocks → 1x1 conv to 32 → tanh:
(B, 32, T / 512), every value in [-1, 1]. The decoder (a-unet U-Net sampled by diffusion) is not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avtool.errors import WeightsError
from avtool.weights.loading import shortlist

CHECKPOINT_PREFIX = "model.encoder."
LOG_FLOOR = 1e-5
FRONT_END_BUFFERS = ("mel.to_spectrogram.window", "mel.to_mel_scale.fb")


@dataclass(frozen=True)
class MelEncoderConfig:
    """`MelE1d`'s arguments (the `mel_` ones without their prefix); defaults are dmae1d-ATC32-v3's. Stage i is a
    stride-`factors[i]` conv from `channels * multipliers[i]` to `channels * multipliers[i + 1]` channels followed by
    `num_blocks[i]` resnet blocks."""

    in_channels: int = 2
    sample_rate: int = 48000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    mel_channels: int = 80
    channels: int = 512
    multipliers: Sequence[int] = (1, 1)
    factors: Sequence[int] = (2,)
    num_blocks: Sequence[int] = (12,)
    out_channels: int = 32
    resnet_groups: int = 8

    def __post_init__(self) -> None:
        for name in ("multipliers", "factors", "num_blocks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not len(self.factors) == len(self.num_blocks) == len(self.multipliers) - 1:
            raise ValueError("MelEncoderConfig needs one factor and one block count per stage, and one more multiplier")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")

    @property
    def downsample_factor(self) -> int:
        """Audio samples per latent frame: 512 for dmae1d-ATC32-v3."""
        return self.hop_length * math.prod(self.factors)

    @property
    def padding(self) -> int:
        return (self.n_fft - self.hop_length) // 2

    def latent_length(self, num_samples: int) -> int:
        """Latent frames the encoder makes of `num_samples` samples: T / 512 when T is a multiple of 512."""
        length = 1 + (num_samples + 2 * self.padding - self.n_fft) // self.hop_length
        for factor in self.factors:
            length = -(-length // factor)  # a kernel 2f+1, stride f, padding f conv keeps ceil(L / f)
        return length


def htk_mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters (n_freqs, n_mels) over `n_freqs` bins evenly spaced from 0 to Nyquist, their edges evenly
    spaced on the HTK mel scale 2595·log10(1 + f / 700) from 0 Hz to Nyquist, peak 1, no area normalisation:
    torchaudio's `MelScale` defaults, which upstream uses."""
    nyquist = float(sample_rate // 2)
    bins = torch.linspace(0.0, nyquist, n_freqs, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + nyquist / 700.0)
    edges = 700.0 * (10.0 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - left) / (centre - left)
    falling = (right - bins[:, None]) / (right - centre)
    return torch.minimum(rising, falling).clamp_min(0.0).float()


class Spectrogram(nn.Module):
    """|STFT| (N, n_fft / 2 + 1, frames) of already padded signals (N, T): whole frames only, periodic Hann window."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        window = self.window.to(signal)
        spectrum = torch.stft(signal, self.n_fft, self.hop_length, window.shape[0], window, center=False,
                              return_complex=True)
        return spectrum.abs()


class MelScale(nn.Module):
    """Magnitudes (N, freqs, frames) → mel bands (N, n_mels, frames) through the filterbank `fb` (freqs, n_mels)."""

    def __init__(self, n_freqs: int, n_mels: int, sample_rate: int) -> None:
        super().__init__()
        self.register_buffer("fb", htk_mel_filterbank(n_freqs, n_mels, sample_rate))

    def forward(self, magnitudes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nfl,fm->nml", magnitudes, self.fb.to(magnitudes))


class LogMelSpectrogram(nn.Module):
    """Audio (..., T) → log mel bands (..., n_mels, frames): upstream's `MelSpectrogram` with `normalize_log=True`."""

    def __init__(self, config: MelEncoderConfig) -> None:
        super().__init__()
        self.padding = config.padding
        self.to_spectrogram = Spectrogram(config.n_fft, config.hop_length, config.win_length)
        self.to_mel_scale = MelScale(config.n_fft // 2 + 1, config.mel_channels, config.sample_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        leading, num_samples = waveform.shape[:-1], waveform.shape[-1]
        if num_samples <= self.padding:
            raise ValueError(f"the mel front end needs more than {self.padding} samples, got {num_samples}")
        # float32 whatever the model's dtype: torch.stft has no half-precision CPU kernel
        signal = F.pad(waveform.reshape(-1, num_samples).float(), (self.padding, self.padding), mode="reflect")
        mel = self.to_mel_scale(self.to_spectrogram(signal))
        return mel.clamp_min(LOG_FLOOR).log().reshape(*leading, *mel.shape[1:])


class ConvBlock(nn.Module):
    """GroupNorm → SiLU → k3 conv."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.groupnorm = nn.GroupNorm(groups, in_channels)
        self.project = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.silu(self.groupnorm(x)))


class ResnetBlock(nn.Module):
    """Two conv blocks plus the input, through a 1x1 conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_channels, out_channels, groups)
        self.block2 = ConvBlock(out_channels, out_channels, groups)
        self.to_out = nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)) + self.to_out(x)


class InputBlock(nn.Module):
    """Upstream's `Patcher` at patch size 1 (its regrouping is then the identity): one resnet block whose norms use
    min(patch size, channels) = 1 group."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ResnetBlock(in_channels, out_channels, groups=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DownsampleStage(nn.Module):
    """A stride-f conv with kernel 2f + 1 and padding f (length ceil(L / f)), then resnet blocks."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, num_blocks: int, groups: int) -> None:
        super().__init__()
        self.downsample = nn.Conv1d(in_channels, out_channels, kernel_size=2 * factor + 1, stride=factor, padding=factor)
        self.blocks = nn.ModuleList(ResnetBlock(out_channels, out_channels, groups) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class MelEncoder(nn.Module):
    """DMAE's encoder: audio (B, in_channels, T) → latent (B, out_channels, latent_length(T)) in [-1, 1]."""

    def __init__(self, config: MelEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MelEncoderConfig()
        widths = [config.channels * multiplier for multiplier in config.multipliers]
        # registration order follows upstream's, so state_dict() lists keys as the checkpoint does
        self.to_in = InputBlock(config.in_channels * config.mel_channels, widths[0])
        self.downsamples = nn.ModuleList(
            DownsampleStage(widths[i], widths[i + 1], factor, blocks, config.resnet_groups)
            for i, (factor, blocks) in enumerate(zip(config.factors, config.num_blocks, strict=True)))
        self.to_out = nn.Conv1d(widths[-1], config.out_channels, kernel_size=1)
        self.mel = LogMelSpectrogram(config)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 3 or waveform.shape[1] != self.config.in_channels:
            raise ValueError(f"MelEncoder takes audio (batch, {self.config.in_channels}, samples), got {tuple(waveform.shape)}")
        mel = self.mel(waveform)  # (B, C, mels, frames); channel-major stacking below is upstream's "b (c f) l"
        x = self.to_in(mel.flatten(1, 2).to(self.to_out.weight.dtype))
        for stage in self.downsamples:
            x = stage(x)
        return torch.tanh(self.to_out(x))


def encoder_state_dict(state: Mapping[str, torch.Tensor], prefix: str = CHECKPOINT_PREFIX) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a whole DMAE checkpoint, with `prefix` taken off their names."""
    return {key[len(prefix):]: tensor for key, tensor in state.items() if key.startswith(prefix)}


def load_mel_encoder(state: Mapping[str, torch.Tensor], config: MelEncoderConfig | None = None,
                     name: str = "dmae1d-ATC32-v3 checkpoint") -> MelEncoder:
    """MelEncoder in eval mode from a whole DMAE state dict (the encoder's keys under `model.encoder.`; the
    decoder's are ignored). The front end's window and filterbank may be absent (then computed); any other missing,
    unexpected or wrong-shaped encoder key is a WeightsError."""
    config = config or MelEncoderConfig()
    tensors = encoder_state_dict(state)
    with torch.device("meta"):
        model = MelEncoder(config)
    layout = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = [f"missing {key}" for key in layout if key not in tensors and key not in FRONT_END_BUFFERS]
    problems += [f"unexpected {key}" for key in tensors if key not in layout]
    problems += [f"{key} {tuple(tensors[key].shape)} != {shape}" for key, shape in layout.items()
                 if key in tensors and tuple(tensors[key].shape) != shape]
    if problems:
        raise WeightsError(shortlist(f"{name}: does not fit the DMAE mel encoder", problems))
    computed = LogMelSpectrogram(config).state_dict()
    tensors = {**{f"mel.{key}": value for key, value in computed.items()}, **tensors}
    model.load_state_dict(tensors, assign=True)
    return model.eval()
