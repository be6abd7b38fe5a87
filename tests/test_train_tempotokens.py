"""TempoTokens mapper training on the tiny weights: the loss on one example drops, `avtool train` on a TempoTokens
config writes a mapper that `avtool tokens --mapper` loads, and config errors exit 2 before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_avtool
from mediagen import clip
from test_cli import REJECT_CHILD

from avtool.pipelines.preprocess import TokensPreprocessOptions, preprocess_tokens
from avtool.training.config import from_dict
from avtool.training.tempotokens_config import TempoTokensConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def samples(tiny_weights, tmp_path_factory):
    videos, out = tmp_path_factory.mktemp("videos"), tmp_path_factory.mktemp("samples")
    clip(videos / "drums.mp4", seconds=1.5)
    preprocess_tokens(videos, out, TokensPreprocessOptions(num_frames=8, height=32, width=32, seed=0), tiny_weights, quiet=True)
    return out


def settings(samples, run_dir, **keys):
    return {"output_dir": str(run_dir), "train_data": {"path": str(samples), "n_sample_frames": 8},
            "embedder_learning_rate": 2e-2, "adam_weight_decay": 0.0, "seed": 0, **keys}


def test_the_loss_on_one_example_drops_as_the_mapper_learns(tiny_weights, samples, tmp_path):
    from avtool.training.tempotokens import TOKEN_PENALTY, TempoTokensTask

    task = TempoTokensTask(from_dict(TempoTokensConfig, settings(samples, tmp_path)), tiny_weights)
    task.mapper.pool_dropout = 0.0  # one fixed example: the same noise, timestep and tokens every step
    batch = task.dataset()[:1]

    def loss_and_noise_term() -> tuple[torch.Tensor, float]:
        loss = task.loss(batch, torch.Generator().manual_seed(0), 0)
        tokens = task.mapper(task.audio_features(batch, 8), 8)
        return loss, loss.item() - TOKEN_PENALTY * tokens.temporal.abs().mean().item()

    optimizer = torch.optim.Adam(task.trainable_parameters(), lr=1e-2)
    start, start_noise_term = loss_and_noise_term()
    for _ in range(60):
        optimizer.zero_grad()
        loss, _ = loss_and_noise_term()
        loss.backward()
        optimizer.step()
    end, end_noise_term = loss_and_noise_term()
    # A random UNet reads little of its text condition: the loss can fall by about 0.035 from 1.14 (200 steps).
    assert end.item() < start.item() - 0.02 and end_noise_term < start_noise_term - 0.015, (start, end)


def test_train_writes_a_mapper_that_avtool_tokens_loads(tiny_weights, samples, tmp_path):
    from avtool.pipelines.train import TrainRequest, train

    config, run_dir = tmp_path / "tempotokens.yaml", tmp_path / "run"
    keys = {"max_train_steps": 3, "checkpointing_steps": 2, "gradient_checkpointing": True, "train_batch_size": 1,
            "use_offset_noise": True, "mixed_precision": "no"}
    config.write_text(json.dumps(settings(samples, run_dir, **keys)))  # JSON is YAML
    result = train(TrainRequest(config, weights_dir=tiny_weights, device="cpu", quiet=True))
    assert result["task"] == "tempotokens" and result["step"] == 3 and result["run_dir"] == str(run_dir)
    mapper = torch.load(run_dir / "learned_embeds.pth", weights_only=True)
    assert mapper.keys() == torch.load(run_dir / "at_embedder_3.pth", weights_only=True).keys()
    assert {"fc1.weight", "fc4.bias", "fga.reduce_potentials.0.weight", "fga.pp_models.0.embed_X.weight"} <= mapper.keys()

    tokens = run_avtool("tokens", samples / "drums.mp4", "--mapper", run_dir / "learned_embeds.pth", "--weights-dir",
                        tiny_weights, "--num-frames", "8", "--duration", "0.3", "--height", "32", "--width", "32",
                        "--steps", "1", "--seed", "1", "--output-dir", tmp_path / "out", "-q", env={"OMP_NUM_THREADS": "1"})
    assert tokens.returncode == 0 and (tmp_path / "out" / "drums_tokens.mp4").is_file(), tokens.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("embedder_learning_rate: 1e-5\ntrain_data: {pathh: x}\n", "unknown key train_data.pathh"),
    ("embedder_learning_rate: 1e-5\nlearnig_rate: 1e-5\n", "unknown key learnig_rate"),
    ("embedder_learning_rate: 1e-5\nuse_unet_lora: true\n", "use_unet_lora: only False"),
    ("train_data: {path: nowhere}\n", "train_data.path nowhere: no such folder"),
])
def test_config_errors_exit_2_naming_the_key_before_torch(tmp_path, text, message):
    path = tmp_path / "tempotokens.yaml"
    path.write_text(text)
    run = subprocess.run([sys.executable, "-c", REJECT_CHILD, "train", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert run.stdout.strip() == "exit=2 heavy=" and message in run.stderr and "Traceback" not in run.stderr, run.stderr
