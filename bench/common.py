"""What the bench scripts share: a weights folder (given, or tiny ones built for the run) and a measured
`avtool` run in a fresh process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MEASURED_CHILD = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run([sys.executable, "-m", "avtool", *sys.argv[1:]]).returncode
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{code} {time.perf_counter() - start:.1f} {peak:.0f}")
"""


@contextlib.contextmanager
def weights_folder(given: Path | None, models: list[str]) -> Iterator[Path]:
    """`given`, else tiny `models` built in a temporary folder that lives as long as the block."""
    if given is not None:
        yield given
        return
    from avtool.weights.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny(Path(tmp), models)
        yield Path(tmp)


def measure_avtool(*args: str) -> tuple[int, str, str]:
    """`python -m avtool ARGS` in a fresh process, offline: (exit code, wall seconds, peak RSS in MB) as printed."""
    out = subprocess.run([sys.executable, "-c", MEASURED_CHILD, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    code, wall, peak = out.stdout.split()
    return int(code), wall, peak
