"""Samplers as plain functions of `(denoise, x, sigmas, extra_args, callback)`, k-diffusion style.

`denoise(x, sigma, **extra_args)` is the (guided) model; conditioning travels in `extra_args`. After each
step `callback({"i", "x", "sigma", "denoised"})` runs, so a progress bar or a preview can follow the sampling.
"""

from __future__ import annotations

from collections.abc import Callable
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
    for i in range(len(sigmas) - 1):
        velocity = denoise(x, sigmas[i], **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x + sigmas[i] * velocity})
        x = x + (sigmas[i] - sigmas[i + 1]) * velocity
    return x
