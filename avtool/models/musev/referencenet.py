"""ReferenceNet: the encoder half of an SD1.5 UNet (conv_in, time embedding, down blocks, mid block; no up
blocks, no conv_out), run on the reference image's latent at timestep 0. Upstream's `ReferenceNet2D` with
`need_block_embs=True, need_self_attn_block_embs=False`."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, get_down_block
from torch import nn

from avtool.models.musev.config import MuseVConfig
from avtool.models.musev.unet import ReferenceFeatures


class ReferenceNet(nn.Module):
    """Built from the spatial fields of a `MuseVConfig` (the referencenet's own config.json has the same shape)."""

    def __init__(self, config: MuseVConfig) -> None:
        super().__init__()
        channels, blocks = config.block_out_channels, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], config.time_embed_dim)
        common = {"temb_channels": config.time_embed_dim, "resnet_eps": config.norm_eps, "resnet_act_fn": "silu",
                  "resnet_groups": config.norm_num_groups, "cross_attention_dim": config.cross_attention_dim,
                  "num_attention_heads": config.attention_head_dim}
        self.down_blocks = nn.ModuleList(
            get_down_block("CrossAttnDownBlock2D" if i < blocks - 1 else "DownBlock2D",
                           num_layers=config.layers_per_block, in_channels=channels[max(i - 1, 0)],
                           out_channels=channels[i], add_downsample=i < blocks - 1, downsample_padding=1,
                           attention_head_dim=channels[i] // config.attention_head_dim, **common)
            for i in range(blocks))
        self.mid_block = UNetMidBlock2DCrossAttn(in_channels=channels[-1], **common)

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor | float = 0) -> ReferenceFeatures:
        """sample: reference latents (B, C, H, W); encoder_hidden_states: IP tokens (or text) (B, L, D)."""
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        hidden = self.conv_in(sample)
        down = [hidden]
        for block in self.down_blocks:
            if isinstance(block, CrossAttnDownBlock2D):
                hidden, outputs = block(hidden, temb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, outputs = block(hidden, temb)
            down += outputs
        mid = self.mid_block(hidden, temb, encoder_hidden_states=encoder_hidden_states)
        return ReferenceFeatures(tuple(down), mid)
