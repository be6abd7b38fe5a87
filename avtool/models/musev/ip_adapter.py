"""IP-Adapter's `ImageProjModel`: one CLIP image embedding → a few cross-attention tokens."""

from __future__ import annotations

import torch
from torch import nn


class ImageProjection(nn.Module):
    """(B, clip_dim) → (B, tokens, cross_attention_dim): Linear, split into tokens, LayerNorm."""

    def __init__(self, cross_attention_dim: int = 768, clip_embeddings_dim: int = 1024, tokens: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(clip_embeddings_dim, tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.tokens = tokens

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(image_embeds).reshape(image_embeds.shape[0], self.tokens, -1))
