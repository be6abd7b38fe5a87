"""Training checkpoints: `checkpoint-<step>.pt` in the run folder, written atomically, read back safely.

A checkpoint is a dict of tensors and plain Python values (see `training.loop`), so it loads with
`torch.load(weights_only=True)`. Each one is written to a temporary file, flushed to disk, then renamed:
a kill at any moment leaves either the previous checkpoints or the new one, never a partial file under the
final name. Only the newest `keep` are kept.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avtool.media.files import atomic_output
from avtool.ui import say

_NAME = re.compile(r"checkpoint-(\d+)\.pt")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in `run_dir`, oldest first."""
    found = [(int(match[1]), path) for path in run_dir.glob("checkpoint-*.pt") if (match := _NAME.fullmatch(path.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as `checkpoint-<step>.pt` atomically, then delete all but the newest `keep` checkpoints."""
    path = checkpoint_path(run_dir, step)
    with atomic_output(path) as tmp, open(tmp, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    _fsync_dir(run_dir)
    _prune(run_dir, keep)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; raises on an unreadable or truncated file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("not a training checkpoint")
    return state


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its contents; unreadable ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as error:  # a damaged file must not stop the resume: an older one will do
            say(f"warning: skipping unreadable checkpoint {path} ({type(error).__name__}: {error})")
    return None


def _prune(run_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    for leftover in run_dir.glob(".checkpoint-*"):  # temporary files of a killed earlier run
        leftover.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_states() -> dict[str, Any]:
    """This process's global RNG states (torch CPU, current CUDA device, numpy, Python) as tensors and plain values."""
    keys_type, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gauss)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
