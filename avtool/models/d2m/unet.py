"""The a-unet 1-D U-Net: audio-diffusion-pytorch 0.1.x's `UNetV0` over a-unet 0.0.16 (the copies vendored by
Dance2Music-Diffusion), with readable module names and the map to a-unet's nested state-dict names.

Level d of `UNetConfig`: a strided conv (kernel = stride = factors[d]) to channels[d]; `items[d]` repetitions of
resnet → [time modulation] → [channel injection] → [self-attention] → [cross-attention]; level d + 1; the same
repetitions again (their own weights); nearest upsampling by factors[d] and a k3 conv back to the level's input
width; then the skip merge: `skip + scale(features) * x` with modulation, else a 1x1 conv over [skip / √2, x].
Level 0 maps `in_channels` to `out_channels`; deeper levels return their input width.

a-unet builds this as nested blocks (every level's items, the inner level and the upsampler in one `Sequential`),
which gives names like `block.blocks.7.block.blocks.3.blocks.0.block.to_q`. Here the levels are a flat list and
`upstream_module_names` gives, in a-unet's registration (state-dict) order, each of our modules with parameters
next to its a-unet name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avtool.models.d2m.config import UNetConfig


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv k3, twice, plus the input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(h))) + x


class Modulation(nn.Module):
    """Each frame's channels layer-normalised (no affine, eps 1e-6), then scaled by 1 + scale and shifted, both from
    the time features. It replaces x: a-unet puts no residual around it."""

    def __init__(self, channels: int, features: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(features, channels * 2)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(F.silu(features)).unsqueeze(-1).chunk(2, dim=1)
        normed = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=1e-6).transpose(1, 2)
        return normed * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention over the frames with a residual. Queries from the normalised frames; keys and values
    from the normalised frames (self-attention) or from a normalised context sequence (cross-attention, when
    `context_features` is given). No projection has a bias."""

    def __init__(self, channels: int, heads: int, head_features: int, context_features: int | None = None) -> None:
        super().__init__()
        inner = heads * head_features
        self.heads = heads
        self.is_cross = context_features is not None
        self.norm = nn.LayerNorm(channels)
        self.norm_context = nn.LayerNorm(context_features or channels)
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_kv = nn.Linear(context_features or channels, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, channels, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, L); context (B, N, context_features) for cross-attention."""
        frames = x.transpose(1, 2)
        if not self.is_cross:
            context = frames
        elif context is None:
            raise ValueError("cross-attention needs a context")
        q = self.to_q(self.norm(frames))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return x + self.to_out(out).transpose(1, 2)


class UNetItem(nn.Module):
    """One repetition of a level's items: resnet → [modulation] → [injection] → [self-attention] → [cross-attention]."""

    def __init__(self, config: UNetConfig, depth: int) -> None:
        super().__init__()
        channels, injected = config.channels[depth], config.context_channels[depth]
        heads, head_features = config.attention_heads, config.attention_features
        self.resnet = ResnetBlock(channels, config.resnet_groups)
        self.modulation = Modulation(channels, config.modulation_features) if config.use_modulation else None
        self.inject = nn.Conv1d(channels + injected, channels, 1) if injected else None
        self.attention = Attention(channels, heads, head_features) if config.attentions[depth] else None
        self.cross_attention = (Attention(channels, heads, head_features, config.embedding_features)
                                if config.cross_attentions[depth] else None)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None, embedding: torch.Tensor | None,
                injected: torch.Tensor | None) -> torch.Tensor:
        x = self.resnet(x)
        if self.modulation is not None:
            x = self.modulation(x, features)
        if self.inject is not None:
            x = self.inject(torch.cat([x, injected], dim=1)) + x
        if self.attention is not None:
            x = self.attention(x)
        if self.cross_attention is not None:
            x = self.cross_attention(x, embedding)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by `factor`, then a k3 conv."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = float(factor)
        self.conv = nn.Conv1d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


class SkipModulate(nn.Module):
    """skip + scale · x, one scale per channel from the time features (a-unet's `MergeModulate`)."""

    def __init__(self, channels: int, features: int) -> None:
        super().__init__()
        self.to_scale = nn.Linear(features, channels)

    def forward(self, skip: torch.Tensor, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        return skip + self.to_scale(F.silu(features)).unsqueeze(-1) * x


class SkipCat(nn.Module):
    """A 1x1 conv over [skip / √2, x] (a-unet's `MergeCat`, used without modulation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels * 2, channels, 1)

    def forward(self, skip: torch.Tensor, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        return self.conv(torch.cat([skip * 2**-0.5, x], dim=1))


class UNetLevel(nn.Module):
    """One depth's modules; `UNet1d.forward` runs them around the deeper levels."""

    def __init__(self, config: UNetConfig, depth: int) -> None:
        super().__init__()
        in_channels, out_channels = config.level_io(depth)
        channels, factor = config.channels[depth], config.factors[depth]
        self.skip_adapter = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.downsample = nn.Conv1d(in_channels, channels, factor, stride=factor)
        self.down = nn.ModuleList(UNetItem(config, depth) for _ in range(config.items[depth]))
        self.up = nn.ModuleList(UNetItem(config, depth) for _ in range(config.items[depth]))
        self.upsample = Upsample(channels, out_channels, factor)
        self.skip = SkipModulate(out_channels, config.modulation_features) if config.use_modulation else SkipCat(out_channels)


class UNet1d(nn.Module):
    """a-unet's `XUNet` as `UNetV0` builds it, without the plugins (time features and context come in ready)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        self.levels = nn.ModuleList(UNetLevel(config, depth) for depth in range(len(config.channels)))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None, embedding: torch.Tensor | None = None,
                channels: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """x (B, in_channels, L) → (B, out_channels, L), L a multiple of the product of `factors`.

        features (B, modulation_features): time features for the modulation and skip merges. embedding (B, N,
        embedding_features): the cross-attention context. channels: per depth, the tensor injected at levels with
        `context_channels[d] > 0`, (B, context_channels[d], L at that depth); other entries are ignored.
        """
        if x.shape[-1] % math.prod(self.config.factors):
            raise ValueError(f"length {x.shape[-1]} is not a multiple of {math.prod(self.config.factors)}")
        skips, injected = [], []
        for depth, level in enumerate(self.levels):
            skips.append(level.skip_adapter(x))
            x = level.downsample(x)
            injected.append(self._injected(channels, depth, x))
            for item in level.down:
                x = item(x, features, embedding, injected[depth])
        for depth in reversed(range(len(self.levels))):
            level = self.levels[depth]
            for item in level.up:
                x = item(x, features, embedding, injected[depth])
            x = level.skip(skips[depth], level.upsample(x), features)
        return x

    def _injected(self, channels: Sequence[torch.Tensor | None] | None, depth: int, x: torch.Tensor) -> torch.Tensor | None:
        width = self.config.context_channels[depth]
        if not width:
            return None
        tensor = channels[depth] if channels is not None and depth < len(channels) else None
        expected = (x.shape[0], width, x.shape[2])
        if tensor is None or tuple(tensor.shape) != expected:
            found = "none" if tensor is None else tuple(tensor.shape)
            raise ValueError(f"level {depth} needs injected channels of shape {expected}, got {found}")
        return tensor


# Our sub-module → a-unet's, inside one item (after the item's `block.blocks.<index>.`).
_ITEM_MODULES = {
    "resnet": (("norm1", "block.blocks.0.blocks.0.0"), ("conv1", "block.blocks.0.blocks.0.2"),
               ("norm2", "block.blocks.0.blocks.1.0"), ("conv2", "block.blocks.0.blocks.1.2")),
    "modulation": (("to_scale_shift", "blocks.0.block.blocks.0.1"),),
    "inject": ((None, "block.blocks.0"),),
    "attention": (("norm", "blocks.0.block.norm"), ("norm_context", "blocks.0.block.norm_context"),
                  ("to_q", "blocks.0.block.to_q"), ("to_kv", "blocks.0.block.to_kv"),
                  ("to_out", "blocks.0.block.attention.blocks.0")),
}
_ITEM_MODULES["cross_attention"] = _ITEM_MODULES["attention"]


def upstream_module_names(config: UNetConfig) -> list[tuple[str, str]]:
    """(our module, a-unet module) for every module with parameters, in a-unet's state-dict order. a-unet names are
    relative to the root `Block` (`XUNet.net`); ours to `UNet1d`. Each item kind (resnet, modulation, ...) is its own
    a-unet block, numbered after the downsampler (index 0); the inner level and then the upsampler follow the items."""
    names: list[tuple[str, str]] = []

    def level(depth: int, prefix: str) -> None:
        ours = f"levels.{depth}"
        in_channels, out_channels = config.level_io(depth)
        if in_channels != out_channels:
            names.append((f"{ours}.skip_adapter", f"{prefix}skip_adapter.block"))
        names.append((f"{ours}.downsample", f"{prefix}block.blocks.0.block"))
        kinds = [kind for kind, present in (("resnet", True), ("modulation", config.use_modulation),
                                            ("inject", config.context_channels[depth] > 0),
                                            ("attention", config.attentions[depth]),
                                            ("cross_attention", config.cross_attentions[depth])) if present]
        index = 1

        def items(side: str) -> None:
            nonlocal index
            for repeat in range(config.items[depth]):
                for kind in kinds:
                    for ours_sub, theirs_sub in _ITEM_MODULES[kind]:
                        module = f"{ours}.{side}.{repeat}.{kind}" + (f".{ours_sub}" if ours_sub else "")
                        names.append((module, f"{prefix}block.blocks.{index}.{theirs_sub}"))
                    index += 1

        items("down")
        if depth + 1 < len(config.channels):
            level(depth + 1, f"{prefix}block.blocks.{index}.")
            index += 1
        items("up")
        names.append((f"{ours}.upsample.conv", f"{prefix}block.blocks.{index}.block.1"))
        names.append((f"{ours}.skip.to_scale", f"{prefix}skip.blocks.0.1") if config.use_modulation
                     else (f"{ours}.skip.conv", f"{prefix}skip.blocks.0"))

    level(0, "")
    return names


def parameter_names(model: nn.Module, module_names: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Module-name pairs → state-dict key pairs (each module's own parameters, in their order)."""
    modules = dict(model.named_modules())
    return [(f"{ours}.{name}", f"{theirs}.{name}")
            for ours, theirs in module_names for name, _ in modules[ours].named_parameters(recurse=False)]
