"""v-objective diffusion on the cosine (half-circle) schedule: audio-diffusion-pytorch's `VSampler`.

Dance2Music-Diffusion samples its latent U-Net with audio-diffusion-pytorch v0.1.3 `VDiffusion` / `VSampler`
(`DiffusionAE.decode`, which its DMAE autoencoder builds on, samples with the same `VSampler` by default):
x_sigma = alpha x0 + beta eps and v = alpha eps - beta x0 with alpha, beta = cos(sigma pi / 2), sin(sigma pi / 2),
sigmas from `vdiffusion_sigmas`.
"""

from __future__ import annotations

from math import pi
from typing import Any

import torch

from avtool.sampling.samplers import Callback, Denoise


@torch.no_grad()
def sample_vdiffusion(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The deterministic v-sampler (DDIM on the cosine schedule) along `sigmas` (1 down to 0); `x` is unit noise.

    Per step `v = denoise(x, sigma_i, **extra_args)`, then `x0 = alpha_i x - beta_i v`,
    `eps = beta_i x + alpha_i v` and `x = alpha_{i+1} x0 + beta_{i+1} eps`, as `VSampler.forward` does.
    `sigma` reaches `denoise` as a 0-d tensor; upstream hands its net one sigma per batch row, so the model
    adapter expands it (it knows the batch, e.g. doubled for guidance). The coefficients are float32 like
    upstream's; `callback({"i", "x", "sigma", "denoised"})` gets the x0 estimate as "denoised".
    """
    extra_args = extra_args or {}
    angles = sigmas.float() * pi / 2
    alphas, betas = torch.cos(angles), torch.sin(angles)
    for i in range(len(sigmas) - 1):
        v = denoise(x, sigmas[i], **extra_args)
        denoised = alphas[i] * x - betas[i] * v
        noise = betas[i] * x + alphas[i] * v
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        x = alphas[i + 1] * denoised + betas[i + 1] * noise
    return x
