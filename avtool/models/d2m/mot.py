"""D2M's motion transformer (`MOT`, upstream `a__unet/motion_transformer.py`): a ViT-style encoder over motion frames.

A learned class token is put before the frames, a learned position table added, then `depth` pre-norm blocks
(attention, feed-forward, each with a residual) and a final LayerNorm. All `num_frames + 1` normalised tokens are the
U-Net's cross-attention context; the genre head sees their mean (`pool="mean"`) or the class token (`pool="cls"`).

Module names are upstream's, so `MOT_final.pt` (a bare `state_dict()`) loads with `load_state_dict` unchanged; that
is why each block is a `ModuleList([attention, feed_forward])` and the feed-forward is an indexed `nn.Sequential`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avtool.models.d2m.config import MOTConfig


class Attention(nn.Module):
    """Pre-norm multi-head self-attention; q, k and v come packed from one bias-free projection."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        # upstream skips the output projection when one head already has the model's width
        self.to_out = nn.Identity() if heads == 1 and dim_head == dim else nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """LayerNorm → Linear → GELU → Dropout → Linear → Dropout; an indexed `net` for upstream's keys (0, 1, 4)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, config: MOTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.dim)  # registered before the layers, as upstream (state-dict order)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(config.dim, config.heads, config.dim_head, config.dropout),
                           FeedForward(config.dim, config.mlp_dim, config.dropout)])
            for _ in range(config.depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm(x)


class MOT(nn.Module):
    """Motion frames (B, N ≤ num_frames, dim) → (tokens (B, N + 1, dim), genre logits (B, num_classes))."""

    def __init__(self, config: MOTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MOTConfig()
        self.pos_embedding = nn.Parameter(torch.randn(1, config.num_frames + 1, config.dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim))
        self.dropout = nn.Dropout(config.emb_dropout)
        self.transformer = Transformer(config)
        self.mlp_head = nn.Linear(config.dim, config.num_classes)

    def forward(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, _ = motion.shape
        if frames > self.config.num_frames:
            raise ValueError(f"MOT takes at most {self.config.num_frames} frames, got {frames}")
        x = torch.cat([self.cls_token.expand(batch, -1, -1), motion], dim=1) + self.pos_embedding[:, : frames + 1]
        tokens = self.transformer(self.dropout(x))
        pooled = tokens.mean(dim=1) if self.config.pool == "mean" else tokens[:, 0]
        return tokens, self.mlp_head(pooled)
