"""Schedules, samplers, guidance and the step runner."""

from avtool.sampling.guidance import TextCfgDenoiser
from avtool.sampling.runner import RUNNER_MODES, StepRunner, resolve_runner
from avtool.sampling.samplers import sample_euler
from avtool.sampling.schedules import linear_quadratic_sigmas

__all__ = ["RUNNER_MODES", "StepRunner", "TextCfgDenoiser", "linear_quadratic_sigmas", "resolve_runner", "sample_euler"]
