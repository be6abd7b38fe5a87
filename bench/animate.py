"""`avtool animate` wall time and memory against video length on tiny MuseV weights (CPU).

    python bench/animate.py [--sizes 12 48 192] [--steps 10]

Image-to-video with the musev_referencenet variant at the default window settings (12 frames overlapping by 4,
one window per UNet call), each length in a fresh process: wall time, peak RSS, and the number of windows per
step. Windows are denoised one batch at a time and decoded frames stream into the encoder, so the peak should
stay near the 12-frame one while the wall time grows with the number of windows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import measure_avtool, weights_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 48, 192])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import cv2
    import numpy as np

    from avtool.sampling import context_windows

    with weights_folder(args.weights_dir, ["musev"]) as weights, tempfile.TemporaryDirectory() as tmp:
        face = Path(tmp) / "face.png"
        cv2.imwrite(str(face), np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8))
        peaks = {}
        for size in args.sizes:
            code, wall, peak = measure_avtool("animate", "--image", face, "--prompt", "(1girl, solo:1)", "--time-size", size,
                                              "--steps", args.steps, "--weights-dir", weights, "--seed", "1", "-q",
                                              "--output-dir", Path(tmp) / f"out{size}")
            peaks[size] = float(peak)
            windows = len(context_windows(size, 12, 4))
            print(f"time_size {size:4d}: {windows:3d} windows per step, exit {code}, {wall} s, peak RSS {peak} MB "
                  f"({peaks[size] / peaks[args.sizes[0]]:.2f}x the {args.sizes[0]}-frame peak)")

if __name__ == "__main__":
    main()
