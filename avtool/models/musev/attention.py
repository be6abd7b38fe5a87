"""MuseV's attention pieces on top of diffusers' `Attention`.

- `ReferenceOnlyAttnProcessor` (spatial attn1): every frame's keys/values also take the condition frames' tokens.
  Parameter-free; upstream's `NonParamReferenceIPXFormersAttnProcessor`.
- `IPAdapterAttention` + `TextImageAttnProcessor` (spatial attn2): text cross-attention plus the decoupled
  IP-Adapter branch (`to_k_ip`/`to_v_ip` on the attention module, as upstream names them).
- `ReferEmbFuseAttention`: fuses one ReferenceNet feature map into the UNet's frames (residual, down path only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


@dataclass(frozen=True)
class FrameLayout:
    """How the (batch × frames) rows of one UNet call are laid out, plus the image prompt.

    Rows are batch-major: row `b * num_frames + t`. The first `condition_frames` frames of every clip are
    clean condition latents. `ip_tokens` (B, n, cross_attention_dim) are the IP-Adapter image tokens.
    """

    num_frames: int
    condition_frames: int = 0
    ip_tokens: torch.Tensor | None = None
    ip_scale: float = 1.0


def multi_head_attention(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of projected (rows, tokens, channels) tensors over `attn.heads` heads."""
    rows, heads = query.shape[0], attn.heads
    q, k, v = (t.reshape(rows, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    return out.transpose(1, 2).reshape(rows, -1, heads * out.shape[-1])


def _output(attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](hidden_states))


class ReferenceOnlyAttnProcessor:
    """Self-attention whose keys/values are [own tokens, tokens of the clip's condition frames]."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, frames: FrameLayout | None = None) -> torch.Tensor:
        context = hidden_states
        if frames is not None and frames.condition_frames > 0 and frames.num_frames > 1:
            rows, tokens, channels = hidden_states.shape
            clips = hidden_states.reshape(rows // frames.num_frames, frames.num_frames, tokens, channels)
            condition = clips[:, : frames.condition_frames].reshape(clips.shape[0], 1, -1, channels)
            condition = condition.expand(-1, frames.num_frames, -1, -1)
            context = torch.cat([clips, condition], dim=2).reshape(rows, -1, channels)
        out = multi_head_attention(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))
        return _output(attn, out)


class IPAdapterAttention(Attention):
    """Cross-attention with the decoupled IP-Adapter projections `to_k_ip`/`to_v_ip` (no bias)."""

    def __init__(self, query_dim: int, cross_attention_dim: int, heads: int, dim_head: int) -> None:
        super().__init__(query_dim=query_dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head,
                         processor=TextImageAttnProcessor())
        self.to_k_ip = nn.Linear(cross_attention_dim, query_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, query_dim, bias=False)


class TextImageAttnProcessor:
    """Text cross-attention, plus `ip_scale` × attention to the IP tokens when the module has IP projections."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, frames: FrameLayout | None = None) -> torch.Tensor:
        query = attn.to_q(hidden_states)
        text = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = multi_head_attention(attn, query, attn.to_k(text), attn.to_v(text))
        if isinstance(attn, IPAdapterAttention) and frames is not None and frames.ip_tokens is not None:
            tokens = frames.ip_tokens.repeat_interleave(query.shape[0] // frames.ip_tokens.shape[0], dim=0)
            out = out + frames.ip_scale * multi_head_attention(attn, query, attn.to_k_ip(tokens), attn.to_v_ip(tokens))
        return _output(attn, out)


class ReferEmbFuseAttention(Attention):
    """Attention from each frame's tokens to [reference tokens, own tokens], added to the frame (residual)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__(query_dim=channels, heads=heads, dim_head=channels // heads)

    def forward(self, hidden_states: torch.Tensor, reference: torch.Tensor, num_frames: int) -> torch.Tensor:
        """hidden_states (B*T, C, h, w), reference (B, C, h', w') → (B*T, C, h, w)."""
        rows, channels, height, width = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)
        reference = reference.flatten(2).transpose(1, 2).repeat_interleave(num_frames, dim=0)
        context = torch.cat([reference, tokens], dim=1)
        out = _output(self, multi_head_attention(self, self.to_q(tokens), self.to_k(context), self.to_v(context)))
        return hidden_states + out.transpose(1, 2).reshape(rows, channels, height, width)
