"""The model adapter MuseV's samplers call: ε for windows of frames with the clean condition frames in front."""

from __future__ import annotations

import torch
from torch import nn

from avtool.models.musev.unet import MuseVUNet, ReferenceFeatures


class MuseVDenoiser(nn.Module):
    """`(x (R, C, n + W, H, W), t, text (2, L, D), ip_tokens (2, k, D) | None) -> ε` of the same shape.

    `CFGDenoiser` stacks the rows as [uncond; cond], each half holding one or more windows (`ParallelDenoiser`
    batches them); the [uncond; cond] conditioning, and the ReferenceNet features given per generation with
    `set_reference`, are repeated over the windows of each half. `condition_frames` = n clean frames lead every
    window (0 with `skip_temporal` for the first-frame image).
    """

    def __init__(self, unet: MuseVUNet, condition_frames: int, motion_speed: float, ip_scale: float = 1.0,
                 skip_temporal: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.condition_frames = condition_frames
        self.motion_speed = motion_speed
        self.ip_scale = ip_scale
        self.skip_temporal = skip_temporal
        self.reference: ReferenceFeatures | None = None

    def set_reference(self, reference: ReferenceFeatures | None) -> None:
        """ReferenceNet features of the reference image, rows [uncond; cond] (None: no fusion)."""
        self.reference = reference

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                ip_tokens: torch.Tensor | None = None) -> torch.Tensor:
        windows = x.shape[0] // 2

        def per_window(rows: torch.Tensor) -> torch.Tensor:
            return rows.repeat_interleave(windows, dim=0)

        reference = None
        if self.reference is not None:
            reference = ReferenceFeatures(tuple(per_window(m) for m in self.reference.down), per_window(self.reference.mid))
        return self.unet(x, t, per_window(text), condition_frames=self.condition_frames, motion_speed=self.motion_speed,
                         refer=reference, ip_tokens=None if ip_tokens is None else per_window(ip_tokens),
                         ip_scale=self.ip_scale, skip_temporal=self.skip_temporal)
