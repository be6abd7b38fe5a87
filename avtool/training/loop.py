"""The training loop shared by every `avtool train` task: one process or many under torchrun, resumable bit for bit.

A task (MusicInfuser, TempoTokens, ...) supplies its trainable parameters, its dataset and its loss; the loop
does the rest: seeding, data order and sharding, AdamW with warm-up + cosine (or StepLR), gradient clipping, averaging
gradients over the processes, checkpoints, `metrics.jsonl` and the progress bar.

Several processes: after each backward pass every gradient is all-reduced and divided by the number of
processes, which is what DistributedDataParallel computes. Doing it here rather than wrapping the model in DDP
keeps the task's loss free to call its model however it likes (DDP only reduces gradients when the forward
pass goes through its wrapper), and avoids DDP's restrictions on reentrant activation checkpointing and on
parameters unused in a step. The cost is that communication does not overlap the backward pass.

Resuming is exact: the data order depends only on (seed, epoch) and the step, and a checkpoint holds the
trainable state, optimizer, scheduler and every rank's RNG states, including the generator handed to
`task.loss`.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from avtool import ui
from avtool.errors import BadInput
from avtool.media.files import ensure_output_dir
from avtool.training import distributed
from avtool.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from avtool.training.config import TrainConfig
from avtool.training.metrics import MetricsLog
from avtool.training.schedule import step_decay, warmup_cosine


class TrainTask(Protocol):
    """What a model-specific task gives the loop."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters to optimise, the same ones in the same order on every call and every rank."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable part of the model as a state dict (what a checkpoint stores)."""

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state` returned (tensors arrive on the CPU)."""

    def dataset(self) -> Sequence[Any]:
        """The training items: indexable, the same on every call, every rank and every run."""

    def loss(self, batch: list[Any], generator: torch.Generator, step: int) -> torch.Tensor:
        """The scalar loss of `batch` (a list of `batch_size` dataset items) at optimizer step `step`.

        Draw all randomness (noise, timesteps, dropout of conditions) from `generator`, a CPU generator
        whose state the checkpoints keep; the global RNGs are restored too, for modules such as nn.Dropout.
        """

    # Optional: `optimizer_groups() -> list[dict]`, AdamW parameter groups with their own lr/betas/eps/weight_decay
    # (the config's optimizer gives the rest); without it, one group of `trainable_parameters()`.

    def save_result(self, run_dir: Path, step: int) -> None:
        """Write the trained artefact (e.g. the adapter file the generation command loads) into `run_dir`.

        Called on rank 0 only, when training stops.
        """


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done in all
    resumed_from: int | None  # the checkpoint's step, if the run resumed from one
    loss: float | None  # the last step's loss (mean over processes), None if no step ran
    checkpoint: Path | None  # the last checkpoint written


@dataclass(frozen=True)
class DataOrder:
    """Which dataset items each rank takes at each step.

    Each epoch is a permutation of the items drawn from (seed, epoch), cut to a multiple of
    batch_size × world; rank r takes every world-th item from position r, in batches. The items of one
    step over all ranks are therefore consecutive in the permutation, as one process with a world times
    bigger batch would take them.
    """

    size: int
    batch_size: int
    seed: int
    rank: int
    world: int

    @property
    def steps_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of `step`."""
        return divmod(step, self.steps_per_epoch)

    def indices(self, step: int) -> list[int]:
        epoch, batch = self.position(step)
        used = self.steps_per_epoch * self.batch_size * self.world
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        mine = distributed.shard(permutation[:used], self.rank, self.world)
        return [int(i) for i in mine[batch * self.batch_size : (batch + 1) * self.batch_size]]


def train(task: TrainTask, run_dir: str | Path, config: TrainConfig, resume: bool = False,
          max_steps: int | None = None, quiet: bool = False) -> TrainResult:
    """Train `task` to `config.training.num_steps` steps (or stop at `max_steps`), checkpointing in `run_dir`.

    `resume`: continue from the newest readable checkpoint in `run_dir` (start afresh if there is none).
    `max_steps`: stop after this many steps in all; the LR schedule still spans `num_steps`.
    Under torchrun, call `distributed.init_distributed()` first (before building the task, so it can pick its GPU).
    """
    if distributed.launched_world_size() > 1 and distributed.world_size() == 1:
        raise RuntimeError("started by a launcher with several processes: call init_distributed() before train()")
    run_dir = Path(run_dir)
    settings = config.training
    stop = settings.num_steps if max_steps is None else min(max_steps, settings.num_steps)
    rank, world = distributed.rank(), distributed.world_size()
    dataset = task.dataset()
    data = _data_order(len(dataset), settings.batch_size, config.seed, rank, world)
    if not resume and list_checkpoints(run_dir):
        raise BadInput(f"{run_dir} already holds checkpoints", hint="pass --resume to continue that run, or choose another folder")
    if distributed.is_main():
        ensure_output_dir(run_dir)

    parameters = list(task.trainable_parameters())
    # a task with several parts trained at their own rates (D2M: U-Net and MOT) gives its AdamW parameter groups
    groups = task.optimizer_groups() if hasattr(task, "optimizer_groups") else [{"params": parameters}]
    optimizer = torch.optim.AdamW(groups, lr=config.optimizer.lr, betas=config.optimizer.betas,
                                  eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
    if settings.lr_schedule == "step":
        lr_factor = functools.partial(step_decay, steps_per_epoch=data.steps_per_epoch, step_epochs=settings.lr_step_epochs,
                                      gamma=settings.lr_gamma)
    else:
        lr_factor = functools.partial(warmup_cosine, warmup=settings.warmup_steps, total=settings.num_steps,
                                      min_factor=settings.min_lr_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator()

    resumed_from = _resume(run_dir, task, optimizer, scheduler, generator, data) if resume else None
    if resumed_from is None:
        _seed_everything(config.seed + rank, generator)
    distributed.broadcast_parameters(parameters)
    start = resumed_from or 0

    log = MetricsLog(run_dir, resumed_from) if distributed.is_main() else None
    last_loss, checkpoint = None, None
    started = time.perf_counter()
    try:
        with ui.progress(quiet or not distributed.is_main()) as bar:
            bar_task = bar.add_task("training", total=stop, completed=start)
            for step in range(start, stop):
                lr = scheduler.get_last_lr()[0]
                loss = _optimizer_step(task, [dataset[i] for i in data.indices(step)], generator, step,
                                       parameters, optimizer, settings.grad_clip)
                scheduler.step()
                last_loss = distributed.mean_over_ranks(loss)
                steps_per_s = (step + 1 - start) / (time.perf_counter() - started)
                if log:
                    log.write(step=step + 1, loss=last_loss, lr=lr, steps_per_s=steps_per_s, time=time.time())
                bar.update(bar_task, advance=1, description=f"training  loss {last_loss:.4g}  {steps_per_s:.2f} steps/s")
                if (settings.save_interval and (step + 1) % settings.save_interval == 0) or step + 1 == stop:
                    checkpoint = _save(run_dir, step + 1, task, optimizer, scheduler, generator, data, settings.keep_checkpoints)
    finally:
        if log:
            log.close()
    if distributed.is_main():
        task.save_result(run_dir, max(start, stop))
    distributed.barrier()
    return TrainResult(step=max(start, stop), resumed_from=resumed_from, loss=last_loss, checkpoint=checkpoint)


def device_generator(generator: torch.Generator, device: str) -> torch.Generator:
    """A generator on `device` for a task's draws there (dropout masks, guidance masking), seeded from the loop's CPU
    `generator` (whose state the checkpoints keep); on the CPU, `generator` itself."""
    if torch.device(device).type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def _data_order(size: int, batch_size: int, seed: int, rank: int, world: int) -> DataOrder:
    if size < batch_size * world:
        raise BadInput(f"the dataset has {size} items, fewer than one step needs "
                       f"(batch_size {batch_size} × {world} processes)")
    return DataOrder(size, batch_size, seed, rank, world)


def _optimizer_step(task: TrainTask, batch: list[Any], generator: torch.Generator, step: int,
                    parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, grad_clip: float) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = task.loss(batch, generator, step)
    loss.backward()
    distributed.average_gradients(parameters)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=grad_clip)
    optimizer.step()
    return loss.detach()


def _seed_everything(seed: int, generator: torch.Generator) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator.manual_seed(seed)


def _save(run_dir: Path, step: int, task: TrainTask, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, data: DataOrder, keep: int) -> Path:
    """Write a checkpoint on rank 0 holding every rank's RNG states (a collective: all ranks call it)."""
    every_rank_rng = distributed.gather_objects({**rng_states(), "generator": generator.get_state()})
    path = run_dir / f"checkpoint-{step}.pt"
    if distributed.is_main():
        epoch, batch = data.position(step)
        state = {
            "step": step,
            "world_size": data.world,
            "data": {"epoch": epoch, "batch": batch, "dataset_size": data.size, "batch_size": data.batch_size},
            "model": task.trainable_state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": every_rank_rng,
        }
        path = save_checkpoint(run_dir, step, state, keep)
    return path


def _resume(run_dir: Path, task: TrainTask, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, data: DataOrder) -> int | None:
    """Load the newest readable checkpoint (rank 0 chooses it, every rank loads it); its step, or None if none."""
    found = latest_checkpoint(run_dir) if distributed.is_main() else None
    path = distributed.broadcast_object(found[0] if found else None)
    if path is None:
        if distributed.is_main():
            ui.say(f"no checkpoint in {run_dir}: starting from step 0")
        return None
    state = found[1] if found else load_checkpoint(path)
    if state["world_size"] != data.world:
        raise BadInput(f"{path} was written by {state['world_size']} processes, this run has {data.world}",
                       hint=f"resume with the same number of processes (torchrun --nproc-per-node {state['world_size']})")
    if state["data"]["dataset_size"] != data.size and distributed.is_main():
        ui.say(f"warning: the dataset had {state['data']['dataset_size']} items and has {data.size}: "
               "the data order differs from the interrupted run's")
    task.load_trainable_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    own_rng = state["rng"][data.rank]
    generator.set_state(own_rng["generator"])
    set_rng_states(own_rng)
    return state["step"]
