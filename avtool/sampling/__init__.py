"""Schedules, samplers, guidance, the token loop and the step runner. Nothing model-specific: a model's call
lives with the model."""

from avtool.sampling.context import ParallelDenoiser, context_windows
from avtool.sampling.discrete import load_scheduler, read_scheduler_config, sample_discrete, scale_initial_noise
from avtool.sampling.guidance import CFGDenoiser
from avtool.sampling.inpaint import VInpaintDenoiser
from avtool.sampling.runner import StepRunner, resolve_runner
from avtool.sampling.samplers import sample_euler_flow, sample_vdiffusion
from avtool.sampling.schedules import linear_quadratic_sigmas, vdiffusion_sigmas
from avtool.sampling.tokens import guided_logits, sample_logits, sample_tokens
from avtool.sampling.windows import RoundRobinDenoiser, prime_shifts, window_offsets

__all__ = [
    "CFGDenoiser", "ParallelDenoiser", "RoundRobinDenoiser", "StepRunner", "context_windows", "guided_logits", "linear_quadratic_sigmas", "load_scheduler",
    "prime_shifts", "read_scheduler_config", "resolve_runner", "sample_discrete", "sample_euler_flow", "sample_logits",
    "sample_tokens", "sample_vdiffusion", "scale_initial_noise", "vdiffusion_sigmas", "VInpaintDenoiser", "window_offsets",
]
