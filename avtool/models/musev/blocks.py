"""Down, mid and up blocks of the MuseV UNet (ModelScope layout): per layer
resnet → temp_conv → spatial transformer → temporal transformer, with upstream's module names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from avtool.models.musev.attention import (
    FrameLayout,
    IPAdapterAttention,
    ReferEmbFuseAttention,
    ReferenceOnlyAttnProcessor,
    TextImageAttnProcessor,
)
from avtool.models.musev.config import MuseVConfig
from avtool.models.musev.temporal import TemporalConvLayer, TransformerTemporalModel


@dataclass(frozen=True)
class BlockInputs:
    """What every block of one UNet call shares."""

    temb: torch.Tensor  # (B*T, time_embed_dim)
    frame_emb: torch.Tensor  # (B, T, time_embed_dim)
    text: torch.Tensor  # (B*T, tokens, cross_attention_dim)
    frames: FrameLayout
    skip_temporal: bool = False  # upstream's set_skip_temporal_layers: a 2D UNet, for single images


def spatial_transformer(config: MuseVConfig, channels: int) -> Transformer2DModel:
    """SD1.5's Transformer2DModel with MuseV's reference-only self-attention and, if configured, IP-Adapter."""
    heads = config.attention_head_dim
    transformer = Transformer2DModel(heads, channels // heads, in_channels=channels, norm_num_groups=config.norm_num_groups,
                                     cross_attention_dim=config.cross_attention_dim)
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(ReferenceOnlyAttnProcessor())
        if config.ip_adapter_cross_attn:
            block.attn2 = IPAdapterAttention(channels, config.cross_attention_dim, heads, channels // heads)
        else:
            block.attn2.set_processor(TextImageAttnProcessor())
    return transformer


def resnet(config: MuseVConfig, in_channels: int, out_channels: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=config.time_embed_dim,
                         eps=config.norm_eps, groups=config.norm_num_groups, non_linearity="silu",
                         skip_time_act=config.resnet_2d_skip_time_act)


class Block3D(nn.Module):
    """`resnets` and `temp_convs`, one per resnet input width, and `attention_layers` pairs of `attentions`
    (spatial) and `temp_attentions` (temporal) transformers."""

    def __init__(self, config: MuseVConfig, in_channels: list[int], channels: int, attention_layers: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnet(config, c, channels) for c in in_channels)
        self.temp_convs = nn.ModuleList(TemporalConvLayer(channels, config.norm_num_groups) for _ in in_channels)
        if attention_layers:
            self.attentions = nn.ModuleList(spatial_transformer(config, channels) for _ in range(attention_layers))
            self.temp_attentions = nn.ModuleList(
                TransformerTemporalModel(channels, config.attention_head_dim, config.time_embed_dim,
                                         config.norm_num_groups) for _ in range(attention_layers))
        self.with_attention = attention_layers > 0

    def layer(self, index: int, hidden_states: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        hidden_states = self.resnets[index](hidden_states, inputs.temb)
        if not inputs.skip_temporal:
            hidden_states = self.temp_convs[index](hidden_states, inputs.frames.num_frames)
        if self.with_attention:
            hidden_states = attend(self.attentions[index], self.temp_attentions[index], hidden_states, inputs)
        return hidden_states


def attend(spatial: Transformer2DModel, temporal: TransformerTemporalModel, hidden_states: torch.Tensor,
           inputs: BlockInputs) -> torch.Tensor:
    hidden_states = spatial(hidden_states, encoder_hidden_states=inputs.text,
                            cross_attention_kwargs={"frames": inputs.frames}, return_dict=False)[0]
    return hidden_states if inputs.skip_temporal else temporal(hidden_states, inputs.frame_emb)


class DownBlock3D(Block3D):
    """Layers, then an optional stride-2 conv; with `need_refer_emb`, one ReferEmbFuseAttention after each."""

    def __init__(self, config: MuseVConfig, in_channels: int, channels: int, with_attention: bool,
                 add_downsample: bool) -> None:
        layers = config.layers_per_block
        super().__init__(config, [in_channels] + [channels] * (layers - 1), channels, layers * with_attention)
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(channels, use_conv=True, out_channels=channels, padding=1,
                                                            name="op")])
        if config.need_refer_emb:
            self.refer_emb_attns = nn.ModuleList(ReferEmbFuseAttention(channels, config.attention_head_dim)
                                                 for _ in range(layers + add_downsample))
        self.add_downsample = add_downsample

    def forward(self, hidden_states: torch.Tensor, inputs: BlockInputs,
                refer_embs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outputs = []
        for index in range(len(self.resnets) + self.add_downsample):
            if index < len(self.resnets):
                hidden_states = self.layer(index, hidden_states, inputs)
            else:
                hidden_states = self.downsamplers[0](hidden_states)
            if refer_embs is not None:
                hidden_states = self.refer_emb_attns[index](hidden_states, refer_embs[index], inputs.frames.num_frames)
            outputs.append(hidden_states)
        return hidden_states, outputs


class UNetMidBlock3DCrossAttn(Block3D):
    """resnet → temp_conv → (spatial → temporal transformer → resnet → temp_conv)."""

    def __init__(self, config: MuseVConfig, channels: int) -> None:
        super().__init__(config, [channels, channels], channels, attention_layers=1)

    def forward(self, hidden_states: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, inputs.temb)
        if not inputs.skip_temporal:
            hidden_states = self.temp_convs[0](hidden_states, inputs.frames.num_frames)
        hidden_states = attend(self.attentions[0], self.temp_attentions[0], hidden_states, inputs)
        hidden_states = self.resnets[1](hidden_states, inputs.temb)
        if not inputs.skip_temporal:
            hidden_states = self.temp_convs[1](hidden_states, inputs.frames.num_frames)
        return hidden_states


class UpBlock3D(Block3D):
    """Layers over [hidden, skip] concatenations (skips consumed last first), then an optional 2× upsample."""

    def __init__(self, config: MuseVConfig, skip_channels: list[int], prev_channels: int, channels: int,
                 with_attention: bool, add_upsample: bool) -> None:
        in_channels = [(prev_channels if i == 0 else channels) + skip for i, skip in enumerate(skip_channels)]
        super().__init__(config, in_channels, channels, len(in_channels) * with_attention)
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=channels)])
        self.add_upsample = add_upsample

    def forward(self, hidden_states: torch.Tensor, skips: list[torch.Tensor], inputs: BlockInputs,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        for index, skip in enumerate(reversed(skips)):
            hidden_states = self.layer(index, torch.cat([hidden_states, skip], dim=1), inputs)
        if self.add_upsample:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states
