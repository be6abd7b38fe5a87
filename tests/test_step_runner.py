"""The step runner's bound on captured CUDA graphs (a fake capture on CPU; the real one where CUDA is)."""

import pytest
import torch
from torch import nn

from avtool.sampling import runner as runner_module
from avtool.sampling.runner import StepRunner


class Prefix(nn.Module):
    """A step whose input length changes from call to call, like a growing token sequence."""

    def forward(self, tokens: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        out = tokens.float().cumsum(-1)
        return out if scale is None else out * scale


class FakeCapture:
    """Stands in for `_CapturedStep` without CUDA: runs the step eagerly, records captures and releases."""

    captured: list = []
    released: list = []

    def __init__(self, step, args, kwargs, pool) -> None:
        self.step, self.shape = step, tuple(args[0].shape)
        FakeCapture.captured.append(self.shape)

    def __call__(self, args, kwargs):
        return self.step(*args, **kwargs)

    def release(self) -> None:
        FakeCapture.released.append(self.shape)


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeCapture.captured, FakeCapture.released = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool",))
    monkeypatch.setattr(runner_module, "_CapturedStep", FakeCapture)
    return FakeCapture


def test_a_growing_sequence_keeps_at_most_max_graphs(fake_cuda):
    runner = StepRunner(Prefix(), "cuda-graph", max_graphs=3)
    for length in range(1, 11):
        tokens = torch.arange(length)
        torch.testing.assert_close(runner(tokens, scale=torch.tensor(2.0)), 2.0 * tokens.float().cumsum(-1))
        assert len(runner.graphs) == min(length, 3)
    assert fake_cuda.captured == [(n,) for n in range(1, 11)]
    assert fake_cuda.released == [(n,) for n in range(1, 8)]  # oldest first, each freed once


def test_the_least_recently_used_graph_goes_first(fake_cuda):
    runner = StepRunner(Prefix(), "cuda-graph", max_graphs=2)
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    runner(a), runner(b), runner(a), runner(c)  # b is the least recently used when c arrives
    assert fake_cuda.released == [(2,)]
    runner(a)
    assert fake_cuda.captured == [(1,), (2,), (3,)]  # a was kept: no recapture
    runner(torch.zeros(2, 1))  # a new signature (shape) for the same positional slot
    assert fake_cuda.released == [(2,), (3,)]


def test_runner_checks_its_arguments():
    with pytest.raises(ValueError, match="max_graphs"):
        StepRunner(Prefix(), "eager", max_graphs=0)
    with pytest.raises(ValueError, match="mode"):
        StepRunner(Prefix(), "fast")
    eager = StepRunner(Prefix(), "eager")
    torch.testing.assert_close(eager(torch.arange(4)), torch.tensor([0.0, 1.0, 3.0, 6.0]))
    assert len(eager.graphs) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_takes_a_cpu_timestep_as_diffusers_schedulers_give_it():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x * t.to(x.device)  # what a diffusers UNet does with a CPU timestep

    graphed = StepRunner(Scaled(), "cuda-graph")
    x = torch.randn(3, 4, device="cuda")
    for t in (torch.tensor(999.0), torch.tensor(7.0)):
        torch.testing.assert_close(graphed(x, t), x * t.cuda())
    assert len(graphed.graphs) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_stay_bounded_and_match_eager():
    step = nn.Linear(8, 8).cuda()
    graphed = StepRunner(step, "cuda-graph", max_graphs=2)
    for length in (1, 2, 3, 1, 2, 3, 3):
        x = torch.randn(length, 8, device="cuda")
        torch.testing.assert_close(graphed(x), step(x), rtol=1e-4, atol=1e-4)
        assert len(graphed.graphs) <= 2
