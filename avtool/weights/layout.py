"""Where each model's files live under a weights folder, and the check pipelines run before loading.

Every model has one folder directly under the weights folder, named by its local folder name (the
registry maps model ids to these), holding the upstream repository's files with their upstream names.
`weights/tiny/` holds the same layout with small random checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

from avtool.errors import WeightsError


def default_weights_dir() -> Path:
    """`$AVTOOL_WEIGHTS`, else `./weights`."""
    return Path(os.environ.get("AVTOOL_WEIGHTS", "weights"))


def require_files(weights_dir: str | os.PathLike, folder: str, files: list[str], model: str) -> Path:
    """Return `weights_dir/folder` after checking that each of `files` (relative to it) exists and is non-empty.

    Raises WeightsError (exit 3) naming the first missing file, with the `avtool download-weights MODEL` hint.
    """
    root = Path(weights_dir) / folder
    for name in files:
        path = root / name
        if not path.is_file():
            raise WeightsError(f"{path}: missing (weights for {model})", model=model)
        if path.stat().st_size == 0:
            raise WeightsError(f"{path}: empty file (weights for {model})", model=model)
    return root


def weights_variant(folder: Path) -> str | None:
    """The diffusers variant tag ("bf16", then "fp16") of a folder holding only tagged weight files
    (`download-weights --variant`), or None when untagged files are there."""
    names = [path.name for path in folder.glob("*.safetensors")]
    if any(".bf16" not in name and ".fp16" not in name for name in names):
        return None
    return next((tag for tag in ("bf16", "fp16") if any(f".{tag}" in name for name in names)), None)
