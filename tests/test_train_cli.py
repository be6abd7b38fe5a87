"""`avtool train` from the command line: config errors before torch, a run under torchrun with two gloo
processes, resuming, the loss plot, and the adapter it writes loading in `avtool dance`."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_avtool
from mediagen import clip
from test_cli import REJECT_CHILD

from avtool.weights.tiny.musicinfuser import TINY_AUDIO_LAYERS


@pytest.fixture(scope="module")
def clips(tiny_weights, tmp_path_factory):
    from avtool.pipelines.preprocess import DancePreprocessOptions, preprocess_dance

    videos, out = tmp_path_factory.mktemp("videos"), tmp_path_factory.mktemp("clips")
    for name in ("one", "two"):
        clip(videos / f"{name}.mp4", seconds=2, fps=30, size="160x120")
    preprocess_dance(videos, out, DancePreprocessOptions(num_frames=7, crop="center", seed=1), tiny_weights, quiet=True)
    return out


def config(path, clips, **training):
    settings = {"num_steps": 4, "warmup_steps": 1, "save_interval": 2, "num_qkv_checkpoint": 0, "num_ff_checkpoint": 0,
                "model_dtype": "fp32", **training}
    path.write_text(json.dumps({"train_data_dir": str(clips), "seed": 3, "audio_mode": "cross_attn",
                                "audio_cross_attn_layers": list(TINY_AUDIO_LAYERS),
                                "model": {"type": "lora+audio", "kwargs": {"qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 4,
                                                                           "out_proj_lora_rank": 4, "out_proj_lora_alpha": 4}},
                                "optimizer": {"lr": 1e-3}, "training": settings}))  # JSON is YAML
    return path


@pytest.mark.parametrize(("text", "message"), [
    (None, "config file not found"),
    ("audio_mode: cross_attn\ntraining: {warmup_stepz: 3}\n", "unknown key training.warmup_stepz"),
    ("embedder_learning_rate: 1e-5\ntrain_data: {path: nowhere}\n", "train_data.path nowhere: no such folder"),
    ("audio_mode: cross_attn\ntrain_data_dir: nowhere\n", "train_data_dir nowhere: no such folder"),
    ("audio_mode: cross_attn\naudio_attention_window: -1\n", "audio_attention_window: must be 0 or more"),
    ("- a list\n", "expected a YAML mapping"),
])
def test_config_errors_exit_2_before_torch(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    if text is not None:
        path.write_text(text)
    run = subprocess.run([sys.executable, "-c", REJECT_CHILD, "train", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert run.stdout.strip() == "exit=2 heavy=" and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_two_gloo_processes_train_resume_plot_and_the_adapter_loads_in_dance(tiny_weights, clips, tmp_path):
    path, run_dir = config(tmp_path / "train.yaml", clips), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "avtool", "train",
              str(path), "--run-dir", str(run_dir), "--weights-dir", str(tiny_weights), "-q", "--json"]
    first = subprocess.run([*launch, "--max-steps", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run([*launch, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["step"] == 4 and result["resumed_from"] == 2
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    plot = run_avtool("train", "--plot", run_dir, "-q")
    assert plot.returncode == 0 and (run_dir / "loss.png").stat().st_size > 1000, plot.stderr

    weights = tmp_path / "weights"  # the trained adapter in place of the published one
    weights.mkdir()
    for folder in tiny_weights.iterdir():
        if folder.name != "musicinfuser":
            (weights / folder.name).symlink_to(folder)
    (weights / "musicinfuser").mkdir()
    (weights / "musicinfuser" / "musicinfuser.safetensors").symlink_to(run_dir / "model_4.adapter.safetensors")
    song = clips / "one.seg0.mp4"
    dance = run_avtool("dance", song, "--weights-dir", weights, "--num-frames", "7", "--steps", "2", "--seed", "1",
                       "--output-dir", tmp_path / "out", "-q")
    assert dance.returncode == 0 and (tmp_path / "out" / "one.seg0_generated.mp4").is_file(), dance.stderr
