"""Learning-rate schedules, as factors of the base rate (for `torch.optim.lr_scheduler.LambdaLR`)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, min_factor: float = 0.0) -> float:
    """Linear warm-up from 0 over `warmup` steps, then a half cosine from 1 down to `min_factor` at step `total`.

    The formula of mochi's `get_cosine_annealing_lr_scheduler` (genmoai/mochi `demos/fine_tuner/train.py`,
    lines 140-151 at 0c86aeb), which MusicInfuser's `train.py` uses: `step / max(1, warmup)` while
    `step < warmup`, else `0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))`. As upstream, step 0 has
    factor 0. Two additions that leave upstream's values unchanged for min_factor 0 and steps up to `total`:
    the rate stays at `min_factor` after `total` (upstream's cosine would climb again), and `total <= warmup`
    does not divide by zero.
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_decay(step: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> float:
    """`gamma ** (epoch // step_epochs)`: torch's StepLR stepped once per epoch, as D2M's training script does."""
    return gamma ** ((step // steps_per_epoch) // step_epochs)
