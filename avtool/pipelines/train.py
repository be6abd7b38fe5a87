"""`avtool train`: fine-tune an audio adapter from a config file, one process or many under torchrun.

    read the config (upstream's keys) and pick its task          (nothing imported or loaded yet)
    under torchrun: join the process group (gloo on CPU, NCCL on GPUs)
    build the task (frozen model, trainable adapter, the preprocessed clips), then the shared loop
    (`avtool.training.loop`): checkpoints every `save_interval` steps, `--resume`, metrics.jsonl, the final adapter

A config names its task by its keys, as upstream's files do: MusicInfuser's has `audio_mode` (and `model.type:
lora+audio`); TempoTokens' has `embedder_learning_rate` or `train_data`; D2M's (upstream has no config file)
`mot_optimizer` or `diffusion_loss_weight`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avtool.errors import BadInput

# task -> its module (with `Task(config, weights_dir, device)`); `<module>_config` holds CONFIG and check_inputs, no torch
TASKS = {"musicinfuser": "avtool.training.musicinfuser", "tempotokens": "avtool.training.tempotokens", "d2m": "avtool.training.d2m"}


@dataclass(frozen=True)
class TrainRequest:
    config: Path
    run_dir: Path | None = None  # None: the config's checkpoint_dir (TempoTokens: output_dir)
    resume: bool = False
    max_steps: int | None = None
    weights_dir: Path = Path("weights")
    device: str = "auto"
    quiet: bool = False


def task_of(raw: dict[str, Any], path: Path) -> str:
    """The task a config is for, from upstream's own keys."""
    if "audio_mode" in raw or (isinstance(raw.get("model"), dict) and raw["model"].get("type") == "lora+audio"):
        return "musicinfuser"
    if "embedder_learning_rate" in raw or "train_data" in raw:
        return "tempotokens"
    if "mot_optimizer" in raw or "diffusion_loss_weight" in raw:
        return "d2m"
    raise BadInput(f"{path}: not a config avtool can train from",
                   hint="start from configs/music_infuser.yaml (MusicInfuser: `audio_mode`, `model.type: lora+audio`) "
                        "or configs/tempotokens/*.yaml (TempoTokens: `embedder_learning_rate`, `train_data`) "
                        "or configs/d2m.yaml (Dance2Music-Diffusion: `mot_optimizer`, `diffusion_loss_weight`)")


def read_config(path: Path) -> tuple[str, Any, Any]:
    """(task name, its config dataclass, the task's torch-free config module) from the YAML at `path`; BadInput
    naming a missing file or an unknown key."""
    from avtool.training.config import load_config, read_yaml

    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a YAML mapping of keys")
    name = task_of(raw, path)
    module = importlib.import_module(TASKS[name] + "_config")
    return name, load_config(path, module.CONFIG, raw), module


def train(request: TrainRequest) -> dict[str, Any]:
    """Run (or resume) the training a config describes; returns what rank 0 reports."""
    from avtool.runtime import check_device

    check_device(request.device)
    if request.max_steps is not None and request.max_steps < 1:
        raise BadInput(f"--max-steps {request.max_steps}: must be at least 1")
    name, config, config_module = read_config(request.config)
    run_dir = request.run_dir or Path(config.checkpoint_dir)
    config_module.check_inputs(config, request.weights_dir)  # data and weights, before torch loads anything

    from avtool.runtime import silence_libraries
    from avtool.training import distributed
    from avtool.training.loop import train as train_loop

    silence_libraries()
    distributed.init_distributed()
    try:
        task = importlib.import_module(TASKS[name]).Task(config, request.weights_dir, request.device)
        result = train_loop(task, run_dir, config, resume=request.resume, max_steps=request.max_steps,
                            quiet=request.quiet)
    finally:
        distributed.cleanup()
    return {"task": name, "run_dir": str(run_dir), "step": result.step, "resumed_from": result.resumed_from,
            "loss": result.loss, "checkpoint": None if result.checkpoint is None else str(result.checkpoint)}


def plot(run_dir: Path, out: Path | None) -> Path:
    """The loss curve of a run (its metrics.jsonl) as a PNG: `out`, else `<run_dir>/loss.png`."""
    from avtool.training.plot import plot_metrics

    if not run_dir.is_dir():
        raise BadInput(f"--plot {run_dir}: no such run folder")
    return plot_metrics(run_dir, out or run_dir / "loss.png")
