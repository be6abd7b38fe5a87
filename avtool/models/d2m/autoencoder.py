"""archisound's `dmae1d-ATC32-v3`: the diffusion autoencoder (audio-diffusion-pytorch 0.1.x `DiffusionAE`) whose
32-channel latents Dance2Music-Diffusion generates. Stereo 48 kHz audio (B, 2, T) ↔ latent (B, 32, T / 512).

Encoder: `MelEncoder` (log mel → convs → tanh). Decoder: upstream's `LTPlugin(UNetV0)` net, predicting v for noisy
audio: a learned analysis conv (2 → 2·128 channels, window 64, stride 32, reflect padding 16, no bias) → the U-Net,
time-conditioned on σ and with the latent injected by 1x1 convs at its deepest level (where its length is T / 512)
→ the transposed conv back to 2 channels. Nothing scales the transform's input or output. Decoding samples that net
with the v-diffusion sampler from unit noise.

Checkpoint names: the decoder net under `model.net.` and again under `model.diffusion.net.` / `model.sampler.net.`
(one tensor each), the encoder under `model.encoder.`. The published config.json holds no architecture (upstream
hard-codes it); our tiny checkpoints add an `avtool_architecture` mapping that `load_dmae` honours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avtool.errors import WeightsError
from avtool.models.d2m import LATENT_CHANNELS
from avtool.models.d2m.diffusion import (
    TimeConditioning,
    drop_alias_copies,
    gather_tied,
    layout_problems,
    time_module_names,
    with_aliases,
)
from avtool.models.d2m.encoder import CHECKPOINT_PREFIX as ENCODER_PREFIX
from avtool.models.d2m.encoder import FRONT_END_BUFFERS, LogMelSpectrogram, MelEncoder, MelEncoderConfig
from avtool.models.d2m.unet import UNet1d, UNetConfig, parameter_names, upstream_module_names
from avtool.sampling.samplers import Callback, sample_vdiffusion
from avtool.sampling.schedules import vdiffusion_sigmas

CHECKPOINT_ROOT = "model."  # transformers' DMAE1d wrapper holds the DiffusionAE as `model`
ARCHITECTURE_KEY = "avtool_architecture"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "pytorch_model.bin"
# LTPlugin's Module([encode, decode, net]) → TimeConditioningPlugin's Module([embedder, mlp, XUNet]) → XUNet.net
_TIME_ROOT = "blocks.2."
_UNET_ROOT = "blocks.2.blocks.2.net."

PUBLISHED_UNET = UNetConfig(in_channels=256, channels=(256, 512, 512, 512, 512), factors=(1, 2, 2, 2, 2),
                            items=(1, 2, 2, 2, 4), attentions=(0,) * 5, cross_attentions=(0,) * 5,
                            context_channels=(0, 0, 0, 0, LATENT_CHANNELS), embedding_features=None)


@dataclass(frozen=True)
class DMAEConfig:
    """The encoder, the decoder's U-Net and its learned transform (`num_filters` per audio channel, so the U-Net
    sees `audio_channels · num_filters` channels). Defaults are dmae1d-ATC32-v3's."""

    encoder: MelEncoderConfig = field(default_factory=MelEncoderConfig)
    unet: UNetConfig = PUBLISHED_UNET
    audio_channels: int = 2
    num_filters: int = 128
    window_length: int = 64
    stride: int = 32

    def __post_init__(self) -> None:
        widths = [width for width in self.unet.context_channels if width]
        if len(widths) != 1 or widths[0] != self.encoder.out_channels:
            raise ValueError(f"the U-Net must inject the {self.encoder.out_channels} latent channels at one level, "
                             f"got context_channels {self.unet.context_channels}")
        if self.unet.in_channels != self.audio_channels * self.num_filters or self.unet.out_channels not in (None, self.unet.in_channels):
            raise ValueError(f"the U-Net must map the transform's {self.audio_channels * self.num_filters} channels to themselves")
        if self.encoder.in_channels != self.audio_channels:
            raise ValueError(f"the encoder takes {self.encoder.in_channels} audio channels, the decoder {self.audio_channels}")
        if self.decoder_factor != self.encoder.downsample_factor:
            raise ValueError(f"the decoder's latent rate (1 per {self.decoder_factor} samples) differs from the encoder's "
                             f"({self.encoder.downsample_factor})")

    @property
    def inject_depth(self) -> int:
        return next(depth for depth, width in enumerate(self.unet.context_channels) if width)

    @property
    def decoder_factor(self) -> int:
        """Audio samples per frame at the injection level: transform stride x the U-Net's factors down to it."""
        return self.stride * math.prod(self.unet.factors[: self.inject_depth + 1])

    @property
    def samples_per_latent(self) -> int:
        return self.encoder.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.encoder.out_channels

    def to_architecture(self) -> dict[str, Any]:
        """JSON-ready mapping that `from_architecture` reads back (config.json's `avtool_architecture`)."""
        return asdict(self)

    @classmethod
    def from_architecture(cls, mapping: Mapping[str, Any]) -> DMAEConfig:
        """The config `to_architecture` wrote; a missing part takes the published value."""
        values = dict(mapping)
        encoder = MelEncoderConfig(**values.pop("encoder", {}))
        unet = UNetConfig(**values.pop("unet")) if "unet" in values else PUBLISHED_UNET
        return cls(encoder=encoder, unet=unet, **values)


class LearnedTransform(nn.Module):
    """LTPlugin's pair: a strided conv with reflect padding into `channels · num_filters` bands, and the transposed
    conv back; length T ↔ T / stride. Neither has a bias."""

    def __init__(self, channels: int, num_filters: int, window_length: int, stride: int) -> None:
        super().__init__()
        padding = window_length // 2 - stride // 2
        self.analysis = nn.Conv1d(channels, channels * num_filters, window_length, stride=stride, padding=padding,
                                  padding_mode="reflect", bias=False)
        self.synthesis = nn.ConvTranspose1d(channels * num_filters, channels, window_length, stride=stride,
                                            padding=padding, bias=False)


class DMAE(nn.Module):
    """The diffusion autoencoder: `encode` audio to latents, `decode` latents to audio by v-diffusion sampling."""

    def __init__(self, config: DMAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DMAEConfig()
        self.encoder = MelEncoder(config.encoder)
        self.transform = LearnedTransform(config.audio_channels, config.num_filters, config.window_length, config.stride)
        self.time = TimeConditioning(config.unet.modulation_features)
        self.unet = UNet1d(config.unet)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, 2, T) → latent (B, 32, T / 512) in [-1, 1] (T a multiple of 512)."""
        return self.encoder(audio.to(self.transform.analysis.weight.device))

    def decoder_v(self, x_noisy: torch.Tensor, sigma: torch.Tensor | float, latent: torch.Tensor) -> torch.Tensor:
        """Predicted v (B, 2, T) for noisy audio (B, 2, T) at noise level σ (B,) or one σ for all, given the latent
        (B, 32, T / 512)."""
        batch = x_noisy.shape[0]
        sigma = torch.as_tensor(sigma, dtype=self.time.embedder.weights.dtype, device=x_noisy.device)
        features = self.time(sigma.expand(batch) if sigma.ndim == 0 else sigma)
        injected = [None] * self.config.inject_depth + [latent.to(x_noisy.dtype)]
        bands = self.unet(self.transform.analysis(x_noisy), features, None, injected)
        return self.transform.synthesis(bands)

    def decode(self, latent: torch.Tensor, steps: int, generator: torch.Generator,
               callback: Callback | None = None) -> torch.Tensor:
        """Latent (B, 32, L) → audio (B, 2, L · 512), sampled in `steps` v-diffusion steps from noise that
        `generator` (a CPU generator) draws in float32, so one seed gives the same start on every device and dtype.
        `callback` gets each step's {"i", "x", "sigma", "denoised"}."""
        if generator.device.type != "cpu":
            raise ValueError(f"decode draws its noise on the CPU; got a {generator.device.type} generator")
        weight = self.transform.analysis.weight
        batch, _, length = latent.shape
        # Upstream draws closest_power_2(L · 512) samples; for L · 512 a power of two (all its inputs) that is L · 512.
        noise = torch.randn(batch, self.config.audio_channels, length * self.config.samples_per_latent,
                            generator=generator, dtype=torch.float32)
        sigmas = vdiffusion_sigmas(steps).to(weight.device)
        return sample_vdiffusion(self.decoder_v, noise.to(weight.device, weight.dtype), sigmas,
                                 {"latent": latent.to(weight.device, weight.dtype)}, callback)


def decoder_key_names(model: DMAE) -> list[tuple[str, str]]:
    """(our state-dict key, upstream key relative to the decoder net), in upstream's order; our time Linear twice."""
    modules = [("transform.analysis", "blocks.0"), ("transform.synthesis", "blocks.1")]
    modules += [(f"time.{ours}", _TIME_ROOT + theirs) for ours, theirs in time_module_names(model.time.num_layers)]
    modules += [(f"unet.{ours}", _UNET_ROOT + theirs) for ours, theirs in upstream_module_names(model.config.unet)]
    return parameter_names(model, modules)


def dmae_state_dict(model: DMAE) -> dict[str, torch.Tensor]:
    """The published checkpoint's layout: the decoder under its three aliases (shared storage), then the encoder."""
    state = model.state_dict()
    decoder = {theirs: state[ours] for ours, theirs in decoder_key_names(model)}
    encoder = {ENCODER_PREFIX + key: tensor for key, tensor in model.encoder.state_dict().items()}
    return {**with_aliases(decoder, CHECKPOINT_ROOT), **encoder}


def read_config(folder: Path) -> DMAEConfig:
    """The architecture of a DMAE folder: config.json's `avtool_architecture`, else the published one."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing", model="d2m") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: unreadable ({error})", model="d2m") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: not a JSON object", model="d2m")
    if ARCHITECTURE_KEY not in config:
        return DMAEConfig()
    try:
        return DMAEConfig.from_architecture(config[ARCHITECTURE_KEY])
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: bad {ARCHITECTURE_KEY} ({error})", model="d2m") from None


def load_dmae(folder: Path, device: torch.device | str, dtype: torch.dtype) -> DMAE:
    """DMAE in eval mode from a dmae1d-ATC32-v3 folder (config.json, pytorch_model.bin read with weights_only=True).
    The decoder's alias copies may be absent; the encoder's window and filterbank too (then computed). Any other
    missing, unexpected or wrong-shaped key is a WeightsError."""
    from avtool.weights.loading import load_state_dict

    folder = Path(folder)
    config = read_config(folder)
    path = folder / WEIGHTS_FILE
    state, problems = drop_alias_copies(load_state_dict(path), CHECKPOINT_ROOT)
    with torch.device("meta"):
        model = DMAE(config)
    own = model.state_dict()
    pairs = [(ours, f"{CHECKPOINT_ROOT}net.{theirs}") for ours, theirs in decoder_key_names(model)]
    pairs += [(f"encoder.{key}", ENCODER_PREFIX + key) for key in model.encoder.state_dict()]
    expected = {theirs: tuple(own[ours].shape) for ours, theirs in pairs}
    problems = layout_problems(expected, state, optional=[ENCODER_PREFIX + key for key in FRONT_END_BUFFERS]) + problems
    if problems:
        raise WeightsError(f"{path}: not a dmae1d-ATC32-v3 checkpoint: {', '.join(problems)}", model="d2m")
    computed = {f"mel.{key}": value for key, value in LogMelSpectrogram(config.encoder).state_dict().items()}
    state = {**{ENCODER_PREFIX + key: value for key, value in computed.items()}, **state}
    model.load_state_dict(gather_tied(pairs, state, str(path)), strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    model.encoder.mel.float()  # the STFT runs in float32 whatever the dtype: keep its window and filterbank exact
    return model.eval()

