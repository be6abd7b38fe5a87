"""The one checkpoint loader every model uses.

safetensors first. `.bin/.pt/.pth/.ckpt` pickles go only through `torch.load(weights_only=True)`, which
rebuilds tensors and plain containers and refuses anything else; a checkpoint that needs arbitrary
pickled code (a class, a function call) is refused with WeightsError (exit 3), never executed.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from avtool.errors import WeightsError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Whatever a checkpoint holds (tensors, dicts, lists, strings, numbers), loaded safely on CPU."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: unknown checkpoint format (expected .safetensors or {'/'.join(PICKLE_SUFFIXES)})")
    import torch

    with reading_weights(path):
        # mmap keeps multi-GB zip checkpoints out of RAM until used; legacy (non-zip) pickles cannot be mapped.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


@contextlib.contextmanager
def reading_weights(path: str | os.PathLike) -> Iterator[None]:
    """Turn any failure to read the weights at `path` (a file or a folder) into a one-line WeightsError naming it.

    A pickle that needs code is refused by `torch.load(weights_only=True)` before anything runs; it is reported
    as such. Truncated or corrupted files (safetensors, zip or pickle), broken configs: "cannot load".
    """
    import pickle

    from safetensors import SafetensorError

    try:
        yield
    except WeightsError:
        raise
    except pickle.UnpicklingError as error:
        # torch's message is paragraphs: a generic preamble, the offending global, a docs link.
        paragraphs = [p.strip() for p in str(error).split("\n\n") if p.strip()]
        detail = " ".join((paragraphs[1] if len(paragraphs) > 1 else str(error)).split())
        raise WeightsError(
            f"{path}: refused: this checkpoint needs arbitrary pickled code to load, which avtool never runs ({detail})",
            hint="use a safetensors file, or the official file, or convert it yourself in a trusted environment",
        ) from None
    except (SafetensorError, OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise WeightsError(f"{path}: unreadable ({type(error).__name__}: {detail})") from None


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, Any]:
    """A flat `{name: torch.Tensor}` state dict from a checkpoint file.

    `key` picks a nested state dict out of a wrapper (e.g. "best_state" in VidMuse's state_dict.bin,
    "image_proj" in MuseV's ip_adapter_image_proj.bin, "model" in a BEATs .pt).
    """
    import torch

    checkpoint = load_checkpoint(path)
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            found = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise WeightsError(f"{path}: no {key!r} entry in the checkpoint (found {found})")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = {k: type(v).__name__ for k, v in list(checkpoint.items())[:8]} if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsError(f"{path}: not a flat state dict of tensors (found {found})",
                           hint="pass key= to pick the nested state dict")
    return checkpoint


def shortlist(label: str, items: Sequence[str], shown: int = 3) -> str:
    """`label: a, b, c (+N more)` naming the first `shown` items, or "" when there are none."""
    if not items:
        return ""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return f"{label}: {', '.join(items[:shown])}{more}"


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file header (e.g. MusicInfuser's `kwargs`), without reading tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError for malformed headers
        raise WeightsError(f"{path}: unreadable safetensors header ({e})", hint="re-download it with avtool download-weights") from None


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    with reading_weights(path):
        return load_file(str(path), device="cpu")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: missing checkpoint file")
    return path


def load_pretrained(cls, folder: Path, **kwargs):
    """`cls.from_pretrained(folder)` (a diffusers or transformers class), reading a `--variant` folder's tagged files;
    a broken or incomplete folder is a WeightsError (exit 3) naming it, not a traceback."""
    from avtool.weights.layout import weights_variant

    variant = weights_variant(folder)
    with reading_weights(folder):
        return cls.from_pretrained(folder, **({"variant": variant} if variant else {}), **kwargs)


@contextlib.contextmanager
def weights_hint(weights_dir: str | os.PathLike, models: dict[str, str]) -> Iterator[None]:
    """Give a WeightsError raised inside the block without a hint the `avtool download-weights ...` hint.

    `models` maps folder names to model ids; the hint names the model whose folder the error names (else all).
    """
    from avtool.weights.layout import download_hint

    try:
        yield
    except WeightsError as error:
        if error.hint is None:
            named = [model for folder, model in models.items() if f"{os.sep}{folder}{os.sep}" in f"{os.sep}{error.message}"]
            error.hint = download_hint(named or list(models.values()), weights_dir)
        raise
