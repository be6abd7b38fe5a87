"""The model-agnostic training loop (avtool.training) on a tiny regression task: it learns, resumes bit for bit
after a kill, skips a damaged checkpoint, runs as two gloo processes under torchrun, and plots its loss."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from avtool.errors import BadInput
from avtool.training.checkpoint import list_checkpoints
from avtool.training.config import OptimizerConfig, TrainConfig, TrainingConfig, load_config
from avtool.training.loop import train
from avtool.training.metrics import read_metrics
from avtool.training.schedule import warmup_cosine

TESTS = Path(__file__).resolve().parent


class RegressionTask:
    """A small MLP fitting y = sin(x).sum() on 32 fixed points. The loss adds input noise drawn from the loop's
    generator and the model has dropout (global RNG), so an exact resume needs both RNG states restored."""

    def __init__(self, noise: float = 0.05, dropout: float = 0.1, sleep: float = 0.0) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 1))
            self.x = torch.randn(32, 4)
        self.y = self.x.sin().sum(dim=1, keepdim=True)
        self.noise, self.sleep = noise, sleep
        self.seen: list[int] = []

    def trainable_parameters(self):
        return self.model.parameters()

    def trainable_state(self):
        return {name: value.detach().clone() for name, value in self.model.state_dict().items()}

    def load_trainable_state(self, state):
        self.model.load_state_dict(state)

    def dataset(self):
        return list(range(len(self.x)))

    def loss(self, batch, generator, step):
        time.sleep(self.sleep)
        self.seen.extend(batch)
        x = self.x[batch] + self.noise * torch.randn(len(batch), 4, generator=generator)
        return torch.nn.functional.mse_loss(self.model(x), self.y[batch])

    def save_result(self, run_dir, step):
        torch.save(self.trainable_state(), run_dir / f"result-{step}.pt")


def config(num_steps: int = 20, save_interval: int = 5, batch_size: int = 4, lr: float = 1e-2) -> TrainConfig:
    return TrainConfig(seed=7, optimizer=OptimizerConfig(lr=lr),
                       training=TrainingConfig(num_steps=num_steps, warmup_steps=3, save_interval=save_interval,
                                               batch_size=batch_size, grad_clip=1.0, keep_checkpoints=2))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def run_script(tmp_path: Path, body: str) -> subprocess.Popen:
    """Start `body` (with the tiny task importable) in a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_loss_drops_on_an_overfit(tmp_path):
    result = train(RegressionTask(noise=0.0, dropout=0.0), tmp_path / "run", config(num_steps=150, save_interval=0), quiet=True)
    losses = [record["loss"] for record in read_metrics(tmp_path / "run")]
    assert len(losses) == 150 and result.step == 150
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
    assert [path.name for _, path in list_checkpoints(tmp_path / "run")] == ["checkpoint-150.pt"]
    assert (tmp_path / "run" / "result-150.pt").is_file()


def test_config_reads_upstream_keys_and_refuses_unknown_ones(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 3\noptimizer:\n  lr: 2e-4\n  weight_decay: 0.01\ntraining:\n  warmup_steps: 10\n  betas_typo: 1\n")
    with pytest.raises(BadInput) as error:
        load_config(path, TrainConfig)
    assert "training.betas_typo" in error.value.message and str(path) in error.value.message
    assert "warmup_steps" in error.value.hint

    path.write_text("seed: 3\noptimizer:\n  lr: 2e-4\n  betas: [0.8, 0.9]\ntraining:\n  warmup_stepz: 10\n")
    with pytest.raises(BadInput, match=r"training\.warmup_stepz") as error:
        load_config(path, TrainConfig)
    assert "did you mean warmup_steps" in error.value.hint

    path.write_text("seed: 3\noptimizer:\n  lr: 2e-4\n  betas: [0.8, 0.9]\ntraining:\n  num_steps: 10\n")
    loaded = load_config(path, TrainConfig)
    assert loaded.optimizer == OptimizerConfig(lr=2e-4, betas=(0.8, 0.9)) and loaded.training.num_steps == 10

    path.write_text("training:\n  num_steps: ten\n")
    with pytest.raises(BadInput, match=r"training\.num_steps: expected int"):
        load_config(path, TrainConfig)
    with pytest.raises(BadInput, match="config file not found"):
        load_config(tmp_path / "missing.yaml", TrainConfig)


def test_warmup_cosine_is_mochis_schedule():
    def mochi(step, warmup, total):  # demos/fine_tuner/train.py: get_cosine_annealing_lr_scheduler
        return step / max(1, warmup) if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    for step in range(0, 4001, 50):
        assert warmup_cosine(step, 200, 4000) == pytest.approx(mochi(step, 200, 4000), abs=1e-15)
    assert warmup_cosine(5000, 200, 4000, min_factor=0.1) == pytest.approx(0.1)


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    run_dir = tmp_path / "run"
    process = run_script(tmp_path, f"""
        from test_training_loop import RegressionTask, config
        from avtool.training.loop import train
        train(RegressionTask(sleep=0.05), {str(run_dir)!r}, config(num_steps=40, save_interval=5), quiet=True)
    """)
    deadline = time.monotonic() + 30
    while not list_checkpoints(run_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    assert process.returncode == -signal.SIGKILL, output
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert 5 <= killed_at < 40

    resumed = RegressionTask()
    result = train(resumed, run_dir, config(num_steps=40, save_interval=5), resume=True, quiet=True)
    uninterrupted = RegressionTask()
    train(uninterrupted, tmp_path / "uninterrupted", config(num_steps=40, save_interval=5), quiet=True)

    assert result.resumed_from == killed_at and result.step == 40
    assert_same_state(resumed.trainable_state(), uninterrupted.trainable_state())
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 41))
    assert not list(run_dir.glob(".checkpoint-*"))


def test_truncated_newest_checkpoint_is_skipped(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(RegressionTask(), run_dir, config(num_steps=20, save_interval=5), max_steps=10, quiet=True)
    newest = run_dir / "checkpoint-10.pt"
    newest.write_bytes(newest.read_bytes()[:1000])

    resumed = RegressionTask()
    result = train(resumed, run_dir, config(num_steps=20, save_interval=5), resume=True, quiet=True)
    assert result.resumed_from == 5
    assert "skipping unreadable checkpoint" in capsys.readouterr().err
    uninterrupted = RegressionTask()
    train(uninterrupted, tmp_path / "uninterrupted", config(num_steps=20, save_interval=5), quiet=True)
    assert_same_state(resumed.trainable_state(), uninterrupted.trainable_state())


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    train(RegressionTask(), tmp_path, config(num_steps=5), quiet=True)
    with pytest.raises(BadInput, match="already holds checkpoints"):
        train(RegressionTask(), tmp_path, config(num_steps=5), quiet=True)


def test_two_gloo_processes_under_torchrun(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(f"""
        import builtins, io, os, tempfile
        import torch
        from test_training_loop import RegressionTask, config
        from avtool.training import distributed
        from avtool.training.loop import train

        RUN_DIR = {str(run_dir)!r}

        def refuse_writes_in_run_dir(function, writes=lambda args, kwargs: True):
            def guarded(*args, **kwargs):
                paths = [str(a) for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike))]
                if writes(args, kwargs) and any(p.startswith(RUN_DIR) for p in paths):
                    raise AssertionError(f"rank 1 writes in the run folder: {{paths}}")
                return function(*args, **kwargs)
            return guarded

        distributed.init_distributed()
        if not distributed.is_main():
            writes = lambda args, kwargs: any(c in str(args[1] if len(args) > 1 else kwargs.get("mode", "r")) for c in "wax+")
            builtins.open = io.open = refuse_writes_in_run_dir(io.open, writes)
            os.replace = refuse_writes_in_run_dir(os.replace)
            tempfile.mkstemp = refuse_writes_in_run_dir(tempfile.mkstemp)
        task = RegressionTask(noise=0.0, dropout=0.0)
        result = train(task, RUN_DIR, config(num_steps=4, save_interval=2, batch_size=2), quiet=True)
        torch.save({{"seen": task.seen, "state": task.trainable_state(), "step": result.step}},
                   {str(out)!r} + f"/rank{{distributed.rank()}}.pt")
        distributed.cleanup()
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert_same_state(ranks[0]["state"], ranks[1]["state"])
    # 4 steps × 2 ranks × batch 2 = 16 items: half an epoch, so every item is seen at most once overall
    assert len(set(ranks[0]["seen"])) == 8 and not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoint-2.pt", "checkpoint-4.pt", "metrics.jsonl", "result-4.pt"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]

    # the same steps in one process with a batch twice as big: the same items and the same mean gradient
    single = RegressionTask(noise=0.0, dropout=0.0)
    train(single, tmp_path / "single", config(num_steps=4, save_interval=2, batch_size=4), quiet=True)
    assert sorted(single.seen) == sorted(ranks[0]["seen"] + ranks[1]["seen"])
    for name, value in single.trainable_state().items():
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-5, atol=1e-6)


def test_plot_writes_a_png(tmp_path):
    from avtool.training.plot import plot_metrics

    with pytest.raises(BadInput, match="no training metrics"):
        plot_metrics(tmp_path, tmp_path / "loss.png")
    train(RegressionTask(), tmp_path, config(num_steps=6), quiet=True)
    plot_metrics(tmp_path, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
