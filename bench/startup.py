"""Wall time of `avtool --help` and `avtool dance --help` (median of several fresh interpreters)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 9


def median_seconds(args: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "avtool", *args], cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    baseline = median_seconds(["--version"])
    print(f"python -m avtool --version      median of {RUNS}: {baseline * 1000:7.1f} ms")
    for args in (["--help"], ["dance", "--help"], ["eval", "--help"]):
        print(f"python -m avtool {' '.join(args):<15} median of {RUNS}: {median_seconds(args) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
