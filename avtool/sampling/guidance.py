"""Classifier-free guidance on the text only, with both branches in one batch."""

from __future__ import annotations

import torch
from torch import nn


class TextCfgDenoiser(nn.Module):
    """Guided velocity `uncond + scale * (cond - uncond)` from one forward of the batch [uncond, cond].

    The text conditioning comes stacked as [uncond, cond] (the unconditional one is the empty prompt
    with zeroed tokens and mask); the audio features are the same for both branches and stay at
    batch 1 (the model expands them). The model predicts in its own dtype; guidance runs in fp32.
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = text.dtype
        batch = torch.cat([x, x]).to(dtype)
        # Mochi's transformer is conditioned on the timestep (1 - sigma) * 1000, not on sigma.
        timestep = ((1 - sigma) * 1000).expand(2).to(dtype)
        prediction = self.model(
            hidden_states=batch,
            encoder_hidden_states=text,
            timestep=timestep,
            encoder_attention_mask=text_mask,
            audio_features=audio,
            return_dict=False,
        ).float()
        uncond, cond = prediction.chunk(2)
        return uncond + self.scale * (cond - uncond)
