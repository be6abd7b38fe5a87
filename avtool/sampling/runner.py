"""The step runner: one denoiser step (both CFG branches and the guidance) run eagerly, compiled or
replayed from a CUDA graph.

`cuda-graph` captures the step once per input signature (shapes, dtypes, devices) into static input
and output buffers and replays it for every step of every generation in the process: each call copies
its inputs into the buffers, replays, and returns a copy of the output. At most `max_graphs` graphs are
kept, least recently used first out, so inputs whose shapes keep changing do not pile up graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from avtool.errors import BadInput
from avtool.runtime import RUNNER_MODES

Signature = tuple[tuple[str, tuple[tuple[int, ...], torch.dtype, torch.device] | None], ...]


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

    def __init__(self, step: nn.Module, args: tuple[torch.Tensor | None, ...], kwargs: dict[str, torch.Tensor | None],
                 pool: tuple) -> None:
        # The buffers live on the GPU, CPU inputs (a scheduler's timestep) included: a graph cannot copy from the CPU.
        device = next((a.device for a in (*args, *kwargs.values()) if a is not None and a.is_cuda), torch.device("cuda"))
        self.args = tuple(None if a is None else a.to(device, copy=True) for a in args)
        self.kwargs = {k: None if v is None else v.to(device, copy=True) for k, v in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: lazy init, cuBLAS handles, autotuning
            for _ in range(2):
                step(*self.args, **self.kwargs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = step(*self.args, **self.kwargs)

    def __call__(self, args: tuple[torch.Tensor | None, ...], kwargs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        for buffer, value in [*zip(self.args, args, strict=True), *((self.kwargs[k], v) for k, v in kwargs.items())]:
            if buffer is not None:
                buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()

    def release(self) -> None:
        """Free the graph and its buffers (their memory goes back to the runner's pool for later captures)."""
        self.graph.reset()
        del self.graph, self.output, self.args, self.kwargs


class StepRunner:
    """Run `step(*tensors, **tensors) -> tensor` in `mode` (eager, compile or cuda-graph; resolve 'auto' first).

    `prepare_for_capture(step)`, if given, runs once before compile or cuda-graph: a model swaps in its
    static-shape code there (e.g. `avtool.models.mochi.use_masked_attention`).

    cuda-graph keeps one graph per input signature, at most `max_graphs` (the least recently used is freed
    when a new one is needed). Capturing runs `step` three times on the first inputs of a signature (two
    warm-ups, then the capture), so a step with side effects must repeat them harmlessly: a KV cache writes
    at a position passed in as a tensor, not at a counter it advances.
    """

    def __init__(self, step: nn.Module, mode: str, prepare_for_capture: Callable[[nn.Module], object] | None = None,
                 max_graphs: int = 8) -> None:
        if max_graphs < 1:
            raise ValueError(f"StepRunner needs room for at least one graph, got max_graphs={max_graphs}")
        if mode not in ("eager", "compile", "cuda-graph"):
            raise ValueError(f"StepRunner mode must be eager, compile or cuda-graph, got {mode!r}")
        if mode == "cuda-graph" and not torch.cuda.is_available():
            raise BadInput("--runner cuda-graph needs CUDA, which this machine does not have", hint="use --runner eager")
        if mode != "eager" and prepare_for_capture is not None:
            prepare_for_capture(step)
        self.mode = mode
        self.step = torch.compile(step, dynamic=False) if mode == "compile" else step
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[Signature, _CapturedStep] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if mode == "cuda-graph" else None

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        if self.mode != "cuda-graph":
            return self.step(*args, **kwargs)
        named = [*((str(i), a) for i, a in enumerate(args)), *sorted(kwargs.items())]
        signature = tuple((name, None if a is None else (tuple(a.shape), a.dtype, a.device)) for name, a in named)
        if signature in self.graphs:
            self.graphs.move_to_end(signature)
        else:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)[1].release()
            self.graphs[signature] = _CapturedStep(self.step, args, kwargs, self._pool)
        return self.graphs[signature](args, kwargs)
