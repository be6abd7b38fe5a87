"""Samplers as plain functions of (denoise, x, sigmas), k-diffusion style."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_euler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow-matching ODE with Euler steps along `sigmas` (descending, last 0).

    `denoise(x, sigma)` returns the velocity pointing from noise to data (Mochi's "x0 - eps"),
    so each step is `x += (sigma_i - sigma_{i+1}) * v`. `callback(i, x)` runs after step i.
    """
    for i in range(len(sigmas) - 1):
        velocity = denoise(x, sigmas[i])
        x = x + (sigmas[i] - sigmas[i + 1]) * velocity
        if callback is not None:
            callback(i, x)
    return x
