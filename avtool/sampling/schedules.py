"""Noise schedules: the sigmas a sampler walks through, from pure noise (1.0) to data (0.0)."""

from __future__ import annotations

import torch


def linear_quadratic_sigmas(steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: `steps + 1` float32 sigmas from 1.0 down to 0.0.

    The removed-noise fraction grows linearly to `threshold_noise` over the first `linear_steps`
    (default: half), then follows the quadratic that continues it with the same slope and reaches 1
    at the last step. So half the steps are spent in sigma in [1 - threshold_noise, 1].
    """
    linear_steps = steps // 2 if linear_steps is None else linear_steps
    if not 0 < linear_steps < steps:
        raise ValueError(f"linear-quadratic schedule needs 0 < linear_steps < steps, got {linear_steps} of {steps}")
    slope = threshold_noise / linear_steps
    quadratic_steps = steps - linear_steps
    curvature = (1.0 - threshold_noise - slope * quadratic_steps) / quadratic_steps**2
    removed = [i * slope for i in range(linear_steps)]
    removed += [threshold_noise + slope * u + curvature * u * u for u in range(quadratic_steps)]
    return torch.tensor([1.0 - x for x in removed] + [0.0], dtype=torch.float32)


def vdiffusion_sigmas(steps: int) -> torch.Tensor:
    """audio-diffusion-pytorch's `VSampler` schedule (v0.1.x `LinearSchedule`): `steps + 1` float32 sigmas,
    `linspace(1, 0)`. A sigma is the angle fraction of the cosine schedule: alpha, beta = cos, sin(sigma * pi / 2).
    """
    if steps < 1:
        raise ValueError(f"v-diffusion schedule needs at least one step, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
