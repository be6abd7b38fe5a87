"""Wall time of `avtool --help`, and of refusing bad input, options and weights (median of fresh interpreters).

Every reject must answer in well under 0.5 s without importing torch, diffusers or transformers; each line says
whether the run imported any of them.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RUNS = 9
CHILD = """
import sys, runpy
sys.argv = ["avtool", *sys.argv[1:]]
try:
    runpy.run_module("avtool", run_name="__main__")
finally:
    heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


def median_seconds(args: list[str], cwd: Path) -> tuple[float, int, str]:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        times.append(time.perf_counter() - start)
    heavy = run.stderr.rsplit("HEAVY=", 1)[-1].strip()
    return statistics.median(times), run.returncode, heavy


def main() -> None:
    from mediagen import tone

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        song = str(tone(folder / "song.wav", seconds=2))
        cases = {
            "--version": ["--version"],
            "--help": ["--help"],
            "dance --help": ["dance", "--help"],
            "eval --help": ["eval", "--help"],
            "reject: missing input": ["dance", "missing.mp3"],
            "reject: --num-frames 14": ["dance", song, "--num-frames", "14"],
            "reject: --seed 2**64": ["dance", song, "--seed", "18446744073709551616"],
            "reject: --device cuda (no GPU)": ["dance", song, "--device", "cuda"],
            "reject: --shard 3/2": ["dance", song, "--shard", "3/2"],
            "reject: missing weights folder": ["dance", song, "--weights-dir", str(folder / "nowhere")],
            "reject: weights folder, models missing": ["dance", song, "--weights-dir", str(folder)],
        }
        print(f"median of {RUNS} fresh interpreters (exit code; heavy modules imported)")
        for name, args in cases.items():
            seconds, code, heavy = median_seconds(args, folder)
            print(f"  {name:40s} {seconds * 1000:7.1f} ms  exit {code}  {heavy or 'no torch/diffusers/transformers'}")


if __name__ == "__main__":
    main()
