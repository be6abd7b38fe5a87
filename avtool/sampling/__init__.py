"""Schedules, samplers, guidance and the step runner. Nothing model-specific: a model's call lives with the model."""

from avtool.sampling.guidance import CFGDenoiser
from avtool.sampling.runner import RUNNER_MODES, StepRunner, resolve_runner
from avtool.sampling.samplers import sample_euler_flow
from avtool.sampling.schedules import linear_quadratic_sigmas

__all__ = ["RUNNER_MODES", "CFGDenoiser", "StepRunner", "linear_quadratic_sigmas", "resolve_runner", "sample_euler_flow"]
