"""Sampling for discrete-time UNets (ε- or v-prediction) on diffusers' own schedulers.

The schedulers are diffusers' classes (Euler discrete, DDIM, DPM-Solver multistep, ...), never re-derived here.
`load_scheduler` builds one the way upstream code does (`X.from_config(pipe.scheduler.config, **overrides)`);
`sample_discrete` is the denoising loop of diffusers' pipelines (`StableDiffusionPipeline`,
`TextToVideoSDPipeline`) as a k-diffusion style function.

Initial noise: `sample_discrete` starts from `x` as given, like k-diffusion's samplers. For generation from
noise, scale unit noise first with `scale_initial_noise` (diffusers' `latents * scheduler.init_noise_sigma`:
sigma_max for Euler with "linspace" or "trailing" spacing as in MuseV, sqrt(sigma_max^2 + 1) with "leading",
1 for DDIM and DPM-Solver); for image/video-to-video start from `scheduler.add_noise(x0, noise, t)` instead,
which is already in the scheduler's sample space.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avtool.sampling.samplers import Callback, Denoise

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm-multistep": "DPMSolverMultistepScheduler",
}
"""Short names for the diffusers scheduler classes the pipelines use; any diffusers class name works too."""

CONFIG_NAME = "scheduler_config.json"


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class for a short name of `SCHEDULERS` or a diffusers class name."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS.get(name, name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"unknown scheduler {name!r}: expected one of {', '.join(SCHEDULERS)} "
                         "or a diffusers scheduler class name")
    return cls


def read_scheduler_config(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A scheduler config as a dict: from a mapping, a `scheduler_config.json`, its folder or a pipeline folder."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / CONFIG_NAME if (path / CONFIG_NAME).is_file() else path / "scheduler" / CONFIG_NAME
    return json.loads(path.read_text())


def load_scheduler(kind: str, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> SchedulerMixin:
    """Build diffusers' `kind` scheduler from `config` with avtool's `overrides`, as upstream's
    `Kind.from_config(pipe.scheduler.config, **overrides)` does.

    Upstream first loads the folder as another class (an SD1.5 folder as `PNDMScheduler`, zeroscope's as
    `DDPMScheduler` in TempoTokens), but diffusers drops the keys that class filled from its own defaults
    (`_use_default_values`) when switching, so only the file's keys carry over and `kind`'s defaults fill the
    rest: MuseV's Euler and TempoTokens' DPM-Solver++ get "linspace" timestep spacing, not PNDM's/DDPM's "leading".
    """
    return scheduler_class(kind).from_config(read_scheduler_config(config), **overrides)


def scale_initial_noise(noise: torch.Tensor, scheduler: SchedulerMixin) -> torch.Tensor:
    """Unit Gaussian noise scaled to the scheduler's first timestep (`noise * scheduler.init_noise_sigma`).

    Call it after `scheduler.set_timesteps`: Euler's `init_noise_sigma` depends on the inference sigmas.
    """
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(...) before scaling the initial noise")
    return noise * scheduler.init_noise_sigma


@torch.no_grad()
def sample_discrete(
    denoise: Denoise,
    x: torch.Tensor,
    scheduler: SchedulerMixin,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    step_args: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Walk `scheduler.timesteps` as diffusers' pipelines do; return the final sample.

    Per timestep `t`: `denoise(scheduler.scale_model_input(x, t), t, **extra_args)` returns the model's raw
    prediction (ε or v: the scheduler's `prediction_type` decides how it is read), then
    `x = scheduler.step(prediction, t, x, generator=generator, **step_args).prev_sample`. `step_args` carries
    scheduler options such as DDIM's `eta` or Euler's `s_churn`.

    `scheduler` must be fresh from `set_timesteps` (multistep and Euler schedulers keep a step counter); the walk
    starts at its `begin_index` when one is set (`set_begin_index`, diffusers' image-to-image convention).
    Stochastic steps draw their noise from `generator`, which must be a CPU generator: diffusers draws on the
    CPU and moves the noise to `x`'s device, so a seed fixes the output on any device.

    `callback({"i", "x", "sigma", "denoised"})` runs after each step with the `x` the step started from, the
    timestep as "sigma", and the scheduler's data estimate as "denoised" (`pred_original_sample`, or for
    DPM-Solver++ its converted model output, which is x0; None where a scheduler gives neither). The returned
    sample has the dtype the scheduler gives (diffusers' Euler casts to the model output's dtype).
    """
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(...) before sampling")
    if getattr(scheduler, "step_index", None) is not None:
        raise ValueError("this scheduler has already stepped: call scheduler.set_timesteps(...) before each sampling run")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"stochastic steps need a CPU generator so that a seed fixes the output on any device, "
                         f"got {generator.device}")
    extra_args = extra_args or {}
    step_args = dict(step_args or {})
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_args["generator"] = generator
    x0_outputs = getattr(scheduler.config, "algorithm_type", None) in ("dpmsolver++", "sde-dpmsolver++")
    start = getattr(scheduler, "begin_index", None) or 0
    for i, t in enumerate(scheduler.timesteps[start:]):
        prediction = denoise(scheduler.scale_model_input(x, t), t, **extra_args)
        output = scheduler.step(prediction, t, x, return_dict=True, **step_args)
        if callback is not None:
            denoised = getattr(output, "pred_original_sample", None)
            if denoised is None and x0_outputs:
                denoised = scheduler.model_outputs[-1]
            callback({"i": i, "x": x, "sigma": t, "denoised": denoised})
        x = output.prev_sample
    return x
