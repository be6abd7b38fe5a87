"""The step runner: one denoiser step (both CFG branches and the guidance) run eagerly, compiled or
replayed from a CUDA graph.

`cuda-graph` captures the step once per input signature (shapes, dtypes, devices) into static input
and output buffers and replays it for every step of every generation in the process: each call copies
its inputs into the buffers, replays, and returns a copy of the output.
"""

from __future__ import annotations

import torch
from torch import nn

from avtool.errors import BadInput
from avtool.sampling.attention import use_masked_attention

RUNNER_MODES = ("auto", "eager", "compile", "cuda-graph")

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device] | None, ...]


def resolve_runner(mode: str, device: str) -> str:
    """'auto' -> cuda-graph on CUDA, eager elsewhere; refuse (exit 2) modes this device cannot run."""
    if mode not in RUNNER_MODES:
        raise BadInput(f"--runner {mode}: expected one of {', '.join(RUNNER_MODES)}")
    on_cuda = device.startswith("cuda")
    if mode == "auto":
        return "cuda-graph" if on_cuda else "eager"
    if mode == "cuda-graph" and not (on_cuda and torch.cuda.is_available()):
        raise BadInput(f"--runner cuda-graph needs a CUDA device, but the model runs on {device}",
                       hint="use --runner eager or --runner compile, or --device cuda on a machine with a GPU")
    return mode


class _CapturedStep:
    """One CUDA graph of `step` for one input signature, with its static buffers."""

    def __init__(self, step: nn.Module, args: tuple[torch.Tensor | None, ...], pool: tuple) -> None:
        self.inputs = tuple(None if a is None else a.clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: lazy init, cuBLAS handles, autotuning
            for _ in range(2):
                step(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = step(*self.inputs)

    def __call__(self, args: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        for buffer, value in zip(self.inputs, args, strict=True):
            if buffer is not None:
                buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()


class StepRunner:
    """Run `step(*tensors) -> tensor` in `mode` (eager, compile or cuda-graph; resolve 'auto' first).

    compile and cuda-graph switch Mochi attention inside `step` to its static-shape form.
    """

    def __init__(self, step: nn.Module, mode: str) -> None:
        if mode not in ("eager", "compile", "cuda-graph"):
            raise ValueError(f"StepRunner mode must be eager, compile or cuda-graph, got {mode!r}")
        if mode == "cuda-graph" and not torch.cuda.is_available():
            raise BadInput("--runner cuda-graph needs CUDA, which this machine does not have", hint="use --runner eager")
        if mode != "eager":
            use_masked_attention(step)
        self.mode = mode
        self.step = torch.compile(step, dynamic=False) if mode == "compile" else step
        self.graphs: dict[Signature, _CapturedStep] = {}
        self._pool = torch.cuda.graph_pool_handle() if mode == "cuda-graph" else None

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        if self.mode != "cuda-graph":
            return self.step(*args)
        signature = tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)
        if signature not in self.graphs:
            self.graphs[signature] = _CapturedStep(self.step, args, self._pool)
        return self.graphs[signature](args)
