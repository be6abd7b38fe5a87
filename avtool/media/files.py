"""Checks on input paths and atomic writing of output files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from avtool.errors import BadInput


def check_input_file(path: str | os.PathLike) -> Path:
    """Return `path` as a Path if it names a readable, non-empty file; raise BadInput otherwise."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: file is empty")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{path}: not readable (permission denied)")
    return path


def ensure_output_dir(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check, by creating a file, that files can be written in it (exit 2 otherwise)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise BadInput(f"{folder}: cannot write files there ({e.strerror or e})", hint="check the folder's permissions or write elsewhere") from None
    return folder


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` only if the block completes.

    On any exception, Ctrl-C included, the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    ensure_output_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    except OSError as e:
        raise BadInput(f"{path.parent}: cannot write output ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _plain_file_mode())  # mkstemp's 0600 would survive the rename
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_sibling(path: str | os.PathLike, suffix: str) -> Path:
    """An empty temporary file in the same folder as `path` (the caller deletes it)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)
