#!/usr/bin/env bash
# Demo: media round trip (a tone and a test pattern -> H.264+AAC mp4 -> probe). Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p outputs/demo
$PY - <<'PY'
import numpy as np
from avtool.media import probe, write_video

fps, seconds, sr = 30, 3, 44100
t = np.arange(seconds * sr) / sr
tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
frames = (np.full((240, 320, 3), (i * 4) % 256, np.uint8) for i in range(fps * seconds))
out = write_video(frames, fps, "outputs/demo/roundtrip.mp4", audio=tone, sample_rate=sr)
print(probe(out))
print(f"wrote {out}")
PY
