"""`avtool animate` wall time and memory against video length on tiny MuseV weights (CPU).

    python bench/animate.py [--sizes 12 48 192] [--steps 10]

Image-to-video with the musev_referencenet variant at the default window settings (12 frames overlapping by 4,
one window per UNet call), each length in a fresh process: wall time, peak RSS, and the number of windows per
step. Windows are denoised one batch at a time and decoded frames stream into the encoder, so the peak should
stay near the 12-frame one while the wall time grows with the number of windows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHILD = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run([sys.executable, "-m", "avtool", "animate", *sys.argv[1:]]).returncode
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{code} {time.perf_counter() - start:.1f} {peak:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 48, 192])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import cv2
    import numpy as np

    from avtool.sampling import context_windows

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights_dir
        if weights is None:
            from avtool.weights.tiny import build_tiny

            weights = Path(tmp) / "weights"
            build_tiny(weights, ["musev"])
        face = Path(tmp) / "face.png"
        cv2.imwrite(str(face), np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8))
        peaks = {}
        for size in args.sizes:
            out = subprocess.run([sys.executable, "-c", CHILD, "--image", str(face), "--prompt", "(1girl, solo:1)",
                                  "--time-size", str(size), "--steps", str(args.steps), "--weights-dir", str(weights),
                                  "--seed", "1", "-q", "--output-dir", str(Path(tmp) / f"out{size}")],
                                 capture_output=True, text=True, cwd=REPO,
                                 env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
            code, wall, peak = out.stdout.split()
            peaks[size] = float(peak)
            windows = len(context_windows(size, 12, 4))
            print(f"time_size {size:4d}: {windows:3d} windows per step, exit {code}, {wall} s, peak RSS {peak} MB "
                  f"({peaks[size] / peaks[args.sizes[0]]:.2f}x the {args.sizes[0]}-frame peak)")


if __name__ == "__main__":
    main()
