"""Round-robin frame windows: denoise a long video one window of frames at a time (TempoTokens' `diffuse`).

The sampler sees one denoiser over all frames. Each call splits the frames into windows of `window` frames,
runs `denoise` on each window with the per-frame conditioning of its frames, and puts the predictions back in
place. The window borders move every step (upstream rolls the latents by a prime number of frames per step,
cycling through a random order of the primes up to the window size), so no seam stays in one place; a window
may wrap around from the last frames to the first, as upstream's roll does.

Upstream steps the scheduler once per window, re-seating its cached model outputs for that window. diffusers'
DDIM, Euler and DPM-Solver steps are elementwise, so one step over all frames after the windows is the same
update; that is what the sampler does here with this denoiser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def prime_shifts(window: int, rng: np.random.Generator) -> list[int]:
    """The primes up to `window` (at least [2]) in a random order: the per-step roll of the window borders."""
    primes = [n for n in range(2, max(window, 2) + 1) if all(n % d for d in range(2, int(n**0.5) + 1))]
    return [int(p) for p in rng.permutation(primes)]


def window_offsets(steps: int, shifts: Sequence[int]) -> list[int]:
    """The cumulative roll before each step's windows (step i rolls by shifts[i % len(shifts)] more)."""
    return np.cumsum([shifts[i % len(shifts)] for i in range(steps)]).tolist()


class RoundRobinDenoiser:
    """`denoise(x, t, **conditioning)` over frame windows of `x` (B, C, F, H, W).

    Conditioning named in `frame_args` has its frame axis at dim 1 (e.g. a per-frame text context
    (rows, F, L, D)) and is cut to each window's frames; the rest passes unchanged. Call i uses
    `offsets[i]`: window k holds the frames (k * window + j - offsets[i]) mod F, j < window.
    """

    def __init__(self, denoise: Callable[..., torch.Tensor], window: int, offsets: Sequence[int],
                 frame_args: tuple[str, ...]) -> None:
        self.denoise = denoise
        self.window = window
        self.offsets = list(offsets)
        self.frame_args = frame_args
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        num_frames = x.shape[2]
        if num_frames % self.window:
            raise ValueError(f"the window of {self.window} frames must divide the {num_frames} frames")
        offset = self.offsets[self.calls]
        self.calls += 1
        prediction = None
        for start in range(0, num_frames, self.window):
            frames = (torch.arange(start, start + self.window) - offset) % num_frames
            window_args = {name: value[:, frames.to(value.device)] if name in self.frame_args else value
                           for name, value in conditioning.items()}
            part = self.denoise(x[:, :, frames.to(x.device)], t, **window_args)
            if prediction is None:
                prediction = part.new_empty(*part.shape[:2], num_frames, *part.shape[3:])
            prediction[:, :, frames.to(part.device)] = part
        return prediction
