"""Samplers as plain functions of `(denoise, x, sigmas, extra_args, callback)`, k-diffusion style.

`denoise(x, sigma, **extra_args)` is the (guided) model; conditioning travels in `extra_args`. After each
step `callback({"i", "x", "sigma", "denoised"})` runs, so a progress bar or a preview can follow the sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from math import pi
from typing import Any

import torch

Denoise = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


@torch.no_grad()
def sample_euler_flow(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate a rectified-flow ODE with Euler steps along `sigmas` (descending, last 0), in fp32.

    `denoise` returns the velocity pointing from noise to data (Mochi's "x0 - eps", with x_sigma =
    (1 - sigma) x0 + sigma eps), so each step is `x += (sigma_i - sigma_{i+1}) * v` and the data estimate
    is `x + sigma * v`.
    """
    extra_args = extra_args or {}
    step_sizes = sigmas[:-1] - sigmas[1:]
    for i in range(len(sigmas) - 1):
        velocity = denoise(x, sigmas[i], **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x + sigmas[i] * velocity})
        x = x + step_sizes[i] * velocity
    return x

# v-objective diffusion on the cosine (half-circle) schedule: audio-diffusion-pytorch's `VSampler`. Dance2Music-Diffusion
# samples its latent U-Net with audio-diffusion-pytorch v0.1.3 `VDiffusion` / `VSampler` (its DMAE autoencoder's
# `DiffusionAE.decode` samples with the same `VSampler` by default): x_sigma = alpha x0 + beta eps and
# v = alpha eps - beta x0 with alpha, beta = cos(sigma pi / 2), sin(sigma pi / 2), sigmas from `vdiffusion_sigmas`.


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
