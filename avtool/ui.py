"""Human-facing output: messages and progress bars on stderr, JSON on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True, highlight=False)


def progress(quiet: bool = False, transfer: bool = False) -> Progress:
    """A rich progress bar on stderr; silent with -q or when stderr is not a terminal.

    `transfer`: tasks count bytes (sizes and speed shown) instead of items.
    """
    counts = (DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(),)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal,
        transient=True,
    )


def say(message: str, quiet: bool = False) -> None:
    """One line of human output on stderr, printed as it is (file names may hold `[`, which is not markup here)."""
    if not quiet:
        stderr.print(message, soft_wrap=True, markup=False)


def print_error(message: str, hint: str | None = None) -> None:
    """`error: MESSAGE` (the label in red on a terminal) and `hint: HINT` on stderr."""
    from rich.text import Text

    stderr.print(Text("error:", style="bold red"), Text(message), soft_wrap=True)
    if hint:
        stderr.print(f"hint: {hint}", soft_wrap=True, markup=False)


def print_json(obj: Any) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()
