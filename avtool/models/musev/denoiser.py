"""The model adapter MuseV's samplers call: ε for windows of frames with the clean condition frames in front."""

from __future__ import annotations

import torch
from diffusers import ControlNetModel
from torch import nn

from avtool.models.musev.unet import ControlResiduals, MuseVUNet, ReferenceFeatures


class MuseVDenoiser(nn.Module):
    """`(x (R, C, n + W, h, w), t, text (2, L, D), ip_tokens (2, k, D) | None, control_images | None) -> ε` of x's shape.

    `CFGDenoiser` stacks the rows as [uncond; cond], each half holding one or more windows (`ParallelDenoiser`
    batches them); the [uncond; cond] conditioning, and the ReferenceNet features given per generation with
    `set_reference`, are repeated over the windows of each half. `condition_frames` = n clean frames lead every
    window (0 with `skip_temporal` for the first-frame image).

    With a `controlnet` (a diffusers `ControlNetModel`, e.g. openpose), `control_images` (R/2, 3, n + W, 8h, 8w) in
    [0, 1] holds each window's control images laid out like its latents (the condition frames' first), one row per
    window of a half; both halves get the same. The ControlNet runs per frame on x itself (condition latents
    included) at timestep t with the text of its row, as upstream does (`MusevControlNetPipeline.get_controlnet_emb`):
    the uncond rows are controlled too, the condition frames keep t (the UNet's may zero it) and the IP tokens
    do not reach the ControlNet. Its residuals, scaled by `control_scale`, go into the UNet (`ControlResiduals`).
    """

    def __init__(self, unet: MuseVUNet, condition_frames: int, motion_speed: float, ip_scale: float = 1.0,
                 skip_temporal: bool = False, controlnet: ControlNetModel | None = None,
                 control_scale: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.condition_frames = condition_frames
        self.motion_speed = motion_speed
        self.ip_scale = ip_scale
        self.skip_temporal = skip_temporal
        self.controlnet = controlnet
        self.control_scale = control_scale
        self.reference: ReferenceFeatures | None = None

    def set_reference(self, reference: ReferenceFeatures | None) -> None:
        """ReferenceNet features of the reference image, rows [uncond; cond] (None: no fusion)."""
        self.reference = reference

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, ip_tokens: torch.Tensor | None = None,
                control_images: torch.Tensor | None = None) -> torch.Tensor:
        windows = x.shape[0] // 2

        def per_window(rows: torch.Tensor) -> torch.Tensor:
            return rows.repeat_interleave(windows, dim=0)

        text = per_window(text)
        reference = None
        if self.reference is not None:
            reference = ReferenceFeatures(tuple(per_window(m) for m in self.reference.down), per_window(self.reference.mid))
        control = None
        if control_images is not None:
            if self.controlnet is None:
                raise ValueError("control_images given to a MuseVDenoiser without a controlnet")
            if control_images.shape[0] != windows:
                raise ValueError(f"control_images has {control_images.shape[0]} rows for {windows} windows per half")
            control = self._control(x, t, text, torch.cat([control_images] * 2))
        return self.unet(x, t, text, condition_frames=self.condition_frames, motion_speed=self.motion_speed,
                         refer=reference, ip_tokens=None if ip_tokens is None else per_window(ip_tokens),
                         ip_scale=self.ip_scale, control=control, skip_temporal=self.skip_temporal)

    def _control(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, images: torch.Tensor) -> ControlResiduals:
        """The ControlNet on every frame of x (R rows), with its row's text and control image."""
        rows, frames = x.shape[0], x.shape[2]

        def per_frame(clips: torch.Tensor) -> torch.Tensor:
            return clips.transpose(1, 2).flatten(0, 1)

        timestep = torch.as_tensor(t, device=x.device).reshape(-1).expand(rows).repeat_interleave(frames)
        down, mid = self.controlnet(per_frame(x), timestep, text.repeat_interleave(frames, dim=0),
                                    controlnet_cond=per_frame(images.to(x)), conditioning_scale=self.control_scale,
                                    return_dict=False)
        return ControlResiduals(tuple(down), mid)
