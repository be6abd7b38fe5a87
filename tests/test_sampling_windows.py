"""Round-robin frame windows (TempoTokens' `diffuse` with --window-size < --num-frames)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from avtool.sampling import RoundRobinDenoiser, load_scheduler, prime_shifts, sample_discrete, window_offsets

SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "steps_offset": 1}


def per_frame_denoiser(x, t, context):
    """A model that treats each frame alone: frame f's prediction depends on x[:, :, f] and context[:, f] only."""
    per_frame = context.mean(dim=(2, 3))[:, None, :, None, None]  # (rows, 1, F, 1, 1)
    return torch.tanh(0.7 * x + per_frame) * (t / 1000)


def test_prime_shifts_are_a_permutation_of_the_primes_up_to_the_window():
    shifts = prime_shifts(12, np.random.default_rng(0))
    assert sorted(shifts) == [2, 3, 5, 7, 11]
    assert prime_shifts(12, np.random.default_rng(0)) == shifts  # seeded
    assert prime_shifts(1, np.random.default_rng(0)) == [2]
    assert window_offsets(4, [2, 3]) == [2, 5, 7, 10]


def test_windows_hold_the_rolled_frames_and_conditions():
    seen = []

    def record(x, t, context):
        seen.append((x[0, 0, :, 0, 0].tolist(), context[0, :, 0].tolist()))
        return x

    frames = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(1, 2, 6, 1, 1)
    context = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 3)
    denoiser = RoundRobinDenoiser(record, window=3, offsets=[0, 2], frame_args=("context",))
    assert torch.equal(denoiser(frames, torch.tensor(1.0), context=context), frames)
    assert torch.equal(denoiser(frames, torch.tensor(1.0), context=context), frames)
    # offset 0: frames 0-2, 3-5; offset 2 (upstream rolls the latents by 2): rolled positions 0-2 hold frames 4, 5, 0
    assert seen == [([0, 1, 2], [0, 1, 2]), ([3, 4, 5], [3, 4, 5]), ([4, 5, 0], [4, 5, 0]), ([1, 2, 3], [1, 2, 3])]


def test_windows_do_not_change_a_model_that_treats_frames_alone():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 12, 3, 3)
    context = torch.randn(2, 12, 5, 8)

    def sample(denoise):
        scheduler = load_scheduler("dpm-multistep", SCHEDULER)
        scheduler.set_timesteps(6)
        return sample_discrete(denoise, x, scheduler, extra_args={"context": context})

    offsets = window_offsets(6, prime_shifts(4, np.random.default_rng(1)))
    whole = sample(lambda x, t, context: per_frame_denoiser(x, t, context[1:]))
    windowed = sample(RoundRobinDenoiser(lambda x, t, context: per_frame_denoiser(x, t, context[1:]), 4, offsets, ("context",)))
    assert torch.allclose(whole, windowed, atol=1e-6)


def test_window_must_divide_the_frames():
    denoiser = RoundRobinDenoiser(lambda x, t: x, window=5, offsets=[0], frame_args=())
    with pytest.raises(ValueError, match="must divide"):
        denoiser(torch.zeros(1, 1, 12, 1, 1), torch.tensor(1.0))


def test_one_step_over_all_frames_equals_upstream_per_window_steps():
    """Upstream steps DPM-Solver++ once per window with its cached outputs sliced to the window; the step is
    elementwise, so one step over all frames gives the same latents."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 2, 2)
    whole = load_scheduler("dpm-multistep", SCHEDULER)
    whole.set_timesteps(5)
    windows = [slice(0, 4), slice(4, 8)]
    per_window = [copy.deepcopy(whole) for _ in windows]
    x_whole, x_windows = x.clone(), x.clone()
    for t in whole.timesteps:
        prediction = torch.sin(3 * x_whole) * t / 1000  # any model output
        x_whole = whole.step(prediction, t, x_whole).prev_sample
        x_windows = torch.cat([s.step(torch.sin(3 * x_windows[:, :, w]) * t / 1000, t, x_windows[:, :, w]).prev_sample
                               for s, w in zip(per_window, windows, strict=True)], dim=2)
        assert torch.allclose(x_whole, x_windows, atol=1e-6)
