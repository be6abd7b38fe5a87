"""Inpainting by replacement for v-diffusion: part of the sample held to known data at every step.

Where `mask` is set, the wrapped denoiser's v is replaced by the v of the known data under the run's own initial
noise, `alpha * noise - beta * known`. The v-sampler then keeps those entries exactly on the path
`alpha_i * known + beta_i * noise` (its x0 estimate there is `known`, its noise estimate `noise`), so every model call
sees the known part noised to the current level, and the sample ends on `known` there. Used to continue a latent
sequence window by window: each window's overlap is held to the previous window's latents.
"""

from __future__ import annotations

from math import pi
from typing import Any

import torch

from avtool.sampling.samplers import Denoise


class VInpaintDenoiser:
    """`denoise(x, sigma, **extra_args)` with the entries under `mask` held to `known`.

    `noise` must be the initial sample handed to `sample_vdiffusion` (sigma starts at 1, where x is pure noise).
    `known`, `mask` and `noise` broadcast against x.
    """

    def __init__(self, denoise: Denoise, known: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> None:
        self.denoise = denoise
        self.known, self.mask, self.noise = known, mask, noise

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        v = self.denoise(x, sigma, **extra_args)
        angle = torch.as_tensor(sigma, dtype=torch.float32) * pi / 2
        held = torch.cos(angle) * self.noise - torch.sin(angle) * self.known
        return torch.where(self.mask, held.to(v.dtype), v)
