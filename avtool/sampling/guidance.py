"""Classifier-free guidance with both branches in one batch, for any model adapter."""

from __future__ import annotations

import torch
from torch import nn


class CFGDenoiser(nn.Module):
    """`uncond + scale * (cond - uncond)` from one forward of the batch `[x, x]`.

    `model(x, sigma, **conditioning)` is a model adapter that knows its model's own call (see e.g.
    `avtool.models.mochi.MochiFlowModel`). Conditioning that differs between the branches comes stacked on
    the batch axis as `[uncond, cond]` (2B rows for B latents); conditioning that is the same for both may stay
    at batch 1 when the model expands it. Guidance is computed in fp32.
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **conditioning: torch.Tensor | None) -> torch.Tensor:
        prediction = self.model(torch.cat([x, x]), sigma, **conditioning).float()
        uncond, cond = prediction.chunk(2)
        return uncond + self.scale * (cond - uncond)
