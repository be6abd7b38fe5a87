"""MuseV's temporal layers: both add `|temporal_weight| × branch` to their input (`temporal_weight` is a learned
scalar, 1e-5 at initialisation), so a fresh layer starts as the identity."""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import TemporalConvLayer as DiffusersTemporalConvLayer
from torch import nn


class TemporalConvLayer(DiffusersTemporalConvLayer):
    """diffusers' four (3,1,1) Conv3d stages over time (ModelScope), scaled by |temporal_weight|."""

    def __init__(self, channels: int, norm_num_groups: int = 32) -> None:
        super().__init__(channels, channels, dropout=0.1, norm_num_groups=norm_num_groups)
        self.temporal_weight = nn.Parameter(torch.tensor([1e-5]))

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B*T, C, h, w) → same shape."""
        rows, channels, height, width = hidden_states.shape
        video = hidden_states.reshape(rows // num_frames, num_frames, channels, height, width).transpose(1, 2)
        branch = self.conv4(self.conv3(self.conv2(self.conv1(video))))
        out = video + self.temporal_weight.abs() * branch
        return out.transpose(1, 2).reshape(rows, channels, height, width)


class TransformerTemporalModel(nn.Module):
    """Attention over time at every pixel, with the frame-position embedding added after `proj_in`.

    One `BasicTransformerBlock` with two self-attentions (attn1, attn2) and a GEGLU feed-forward.
    """

    def __init__(self, channels: int, heads: int, frame_embed_dim: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.frame_emb_proj = nn.Linear(frame_embed_dim, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, double_self_attention=True)])
        self.proj_out = nn.Linear(channels, channels)
        self.temporal_weight = nn.Parameter(torch.tensor([1e-5]))

    def forward(self, hidden_states: torch.Tensor, frame_emb: torch.Tensor) -> torch.Tensor:
        """hidden_states (B*T, C, h, w), frame_emb (B, T, frame_embed_dim) → (B*T, C, h, w)."""
        batch, num_frames = frame_emb.shape[:2]
        _, channels, height, width = hidden_states.shape
        video = hidden_states.reshape(batch, num_frames, channels, height, width)
        tokens = self.norm(video.transpose(1, 2)).permute(0, 3, 4, 2, 1).reshape(-1, num_frames, channels)
        # SiLU here even when the UNet already applied one (use_anivv1_cfg): upstream applies both.
        position = self.frame_emb_proj(nn.functional.silu(frame_emb))
        tokens = self.proj_in(tokens) + position.repeat_interleave(height * width, dim=0)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        branch = self.proj_out(tokens).reshape(batch, height, width, num_frames, channels).permute(0, 3, 4, 1, 2)
        return (video + self.temporal_weight.abs() * branch).reshape_as(hidden_states)
