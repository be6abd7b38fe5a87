"""The MuseV 3D UNet: SD1.5's spatial layers with ModelScope-style temporal layers, MuseV's frame-position
embedding, reference-only self-attention to the condition frames, and (referencenet variants) IP-Adapter
cross-attention, a zero time embedding for the condition frames and ReferenceNet feature fusion.

Upstream behaviours kept (musev/models/unet_3d_condition.py @ 43370a6):
- The condition frames are ordinary frames of the clip (clean latents at the start); their prediction is returned
  too and the caller drops it.
- `use_anivv1_cfg`: SiLU once on the time embedding (resnets skip theirs) and on the frame embedding; frame index
  = arange(T) × motion_speed truncated to integers.
- The ReferenceNet index mapping quirk below.
- Not kept: AdaIN temporal conditioning and the CFG branch of the transformer blocks, both no-ops upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from avtool.models.musev.attention import FrameLayout, ReferEmbFuseAttention
from avtool.models.musev.blocks import BlockInputs, DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D
from avtool.models.musev.config import MuseVConfig
from avtool.models.musev.temporal import TransformerTemporalModel


@dataclass(frozen=True)
class ReferenceFeatures:
    """ReferenceNet outputs for one reference image per batch row: `down` = conv_in output and the 11 down
    outputs (12 maps of (B, C, h, w)), `mid` = the mid-block output."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


@dataclass(frozen=True)
class ControlResiduals:
    """ControlNet outputs for every frame, added as diffusers' UNets add `down_block_additional_residuals` and
    `mid_block_additional_residual`: `down` = one map ((B*T), C, h, w) per skip connection (conv_in output and
    every down output), `mid` = one for the mid-block output."""

    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


def refer_emb_indices(block: int, layers_per_block: int, num_blocks: int) -> range:
    """Which `ReferenceFeatures.down` maps down block `block` fuses.

    Upstream's formula, kept for checkpoint parity: the final block (no downsampler) gets start 1 + 2*3 = 7,
    i.e. maps [7, 8] (block 2's features at twice its size), not [10, 11].
    """
    count = layers_per_block + (block != num_blocks - 1)
    start = 1 + count * block
    return range(start, start + count)


class MuseVUNet(nn.Module):
    """ε-prediction for a batch of latent clips (B, C, T, H, W); see `forward`."""

    def __init__(self, config: MuseVConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        heads, embed_dim, blocks = config.attention_head_dim, config.time_embed_dim, len(channels)
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], embed_dim)
        self.frame_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.frame_embedding = TimestepEmbedding(channels[0], embed_dim)
        if config.need_transformer_in:
            self.transformer_in = TransformerTemporalModel(channels[0], heads, embed_dim, config.norm_num_groups)
        if config.need_refer_emb:
            self.first_refer_emb_attns = ReferEmbFuseAttention(channels[0], heads)
            self.mid_block_refer_emb_attns = ReferEmbFuseAttention(channels[-1], heads)

        with_attention = [i < blocks - 1 for i in range(blocks)]  # CrossAttnDownBlock3D ×3, DownBlock3D
        self.down_blocks = nn.ModuleList(
            DownBlock3D(config, channels[max(i - 1, 0)], channels[i], with_attention[i], add_downsample=i < blocks - 1)
            for i in range(blocks))
        self.mid_block = UNetMidBlock3DCrossAttn(config, channels[-1])
        skips = self._skip_channels()
        up_channels = list(reversed(channels))
        self.up_blocks = nn.ModuleList(
            UpBlock3D(config, skips[i], up_channels[max(i - 1, 0)], up_channels[i], with_attention[blocks - 1 - i],
                      add_upsample=i < blocks - 1)
            for i in range(blocks))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    def _skip_channels(self) -> list[list[int]]:
        """Channels of the down-path outputs each up block consumes, in the order it consumes them (last first)."""
        channels, layers = self.config.block_out_channels, self.config.layers_per_block
        produced = [channels[0]]
        for i, c in enumerate(channels):
            produced += [c] * (layers + (i < len(channels) - 1))
        per_block = layers + 1
        consumed = list(reversed(produced))
        return [consumed[per_block * i: per_block * (i + 1)] for i in range(len(channels))]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor, *,
                condition_frames: int = 0, motion_speed: float = 8.0, frame_index: torch.Tensor | None = None,
                refer: ReferenceFeatures | None = None, ip_tokens: torch.Tensor | None = None, ip_scale: float = 1.0,
                control: ControlResiduals | None = None, skip_temporal: bool = False) -> torch.Tensor:
        """ε for every frame of `sample` (B, C, T, H, W), condition frames included.

        timestep: scalar or (B,). encoder_hidden_states: text tokens (B, L, D) for all frames or (B, T, L, D).
        condition_frames: how many frames at the start are clean condition latents (0: none).
        motion_speed: frame-index multiplier of the anivv1 variants (upstream `sample_frame_rate`); ignored when
        `frame_index` (T,) or (B, T) is given. refer: ReferenceNet features (referencenet variants; None skips
        the fusion). ip_tokens: IP-Adapter image tokens (B, n, D), used by the variants with IP-Adapter layers.
        control: ControlNet residuals, added to the skip connections and to the mid-block output (after the
        ReferenceNet fusion, as upstream).
        skip_temporal: bypass every temporal layer (upstream's first-frame generation).
        """
        config = self.config
        batch, _, num_frames, height, width = sample.shape
        frames = FrameLayout(num_frames, condition_frames, ip_tokens, ip_scale)
        inputs = BlockInputs(self._time_embedding(timestep, sample, condition_frames),
                             self._frame_embedding(frame_index, batch, num_frames, motion_speed, sample),
                             self._text_per_frame(encoder_hidden_states, num_frames), frames, skip_temporal)

        hidden = self.conv_in(sample.transpose(1, 2).reshape(batch * num_frames, -1, height, width))
        if config.need_transformer_in and not skip_temporal:
            hidden = self.transformer_in(hidden, inputs.frame_emb)
        if refer is not None:
            hidden = self.first_refer_emb_attns(hidden, refer.down[0], num_frames)
        skips = [hidden]
        for i, block in enumerate(self.down_blocks):
            maps = None
            if refer is not None:
                maps = [refer.down[j] for j in refer_emb_indices(i, config.layers_per_block, len(self.down_blocks))]
            hidden, outputs = block(hidden, inputs, maps)
            skips += outputs
        if control is not None:
            skips = [skip + residual for skip, residual in zip(skips, control.down, strict=True)]
        hidden = self.mid_block(hidden, inputs)
        if refer is not None:
            hidden = self.mid_block_refer_emb_attns(hidden, refer.mid, num_frames)
        if control is not None:
            hidden = hidden + control.mid
        for block in self.up_blocks:
            count = len(block.resnets)
            skips, used = skips[:-count], skips[-count:]
            hidden = block(hidden, used, inputs, upsample_size=tuple(skips[-1].shape[-2:]) if skips else None)
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.reshape(batch, num_frames, -1, height, width).transpose(1, 2)

    def _time_embedding(self, timestep: torch.Tensor | float, sample: torch.Tensor,
                        condition_frames: int) -> torch.Tensor:
        batch, num_frames = sample.shape[0], sample.shape[2]
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if self.config.use_anivv1_cfg:
            emb = nn.functional.silu(emb)
        emb = emb.repeat_interleave(num_frames, dim=0).reshape(batch, num_frames, -1)
        if self.config.keep_vision_condtion and condition_frames > 0 and num_frames > 1:
            emb = torch.cat([torch.zeros_like(emb[:, :condition_frames]), emb[:, condition_frames:]], dim=1)
        return emb.reshape(batch * num_frames, -1)

    def _frame_embedding(self, frame_index: torch.Tensor | None, batch: int, num_frames: int, motion_speed: float,
                         sample: torch.Tensor) -> torch.Tensor:
        if frame_index is None:
            frame_index = torch.arange(num_frames, device=sample.device)
            if self.config.use_anivv1_cfg:
                frame_index = (frame_index * motion_speed).long()
        frame_index = frame_index.to(sample.device).expand(batch, num_frames)
        emb = self.frame_embedding(self.frame_proj(frame_index.reshape(-1)).to(sample.dtype))
        if self.config.use_anivv1_cfg:
            emb = nn.functional.silu(emb)
        return emb.reshape(batch, num_frames, -1)

    @staticmethod
    def _text_per_frame(encoder_hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        if encoder_hidden_states.ndim == 4:
            return encoder_hidden_states.flatten(0, 1)
        return encoder_hidden_states.repeat_interleave(num_frames, dim=0)
