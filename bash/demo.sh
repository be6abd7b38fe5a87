#!/usr/bin/env bash
# Demo (`make demo`): music to dance on tiny random weights — builds weights/tiny if missing, synthesises a short
# song (no download), runs `avtool dance` on it and prints where the video is. Seconds on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
WEIGHTS=weights/tiny
SONG=outputs/demo/song.wav
mkdir -p outputs/demo

if [ ! -f "$WEIGHTS/musicinfuser/musicinfuser.safetensors" ] || [ ! -f "$WEIGHTS/mochi-1-preview/model_index.json" ]; then
    $PY -m avtool download-weights --tiny mochi-1-preview musicinfuser --dir "$WEIGHTS"
fi

$PY - "$SONG" <<'PY'
import sys

import numpy as np
import soundfile

# 4 s at 120 bpm: a decaying kick on every beat over an A-minor chord.
sr, seconds = 44100, 4.0
t = np.arange(int(sr * seconds)) / sr
chord = sum(0.12 * np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63))
since_beat = t % 0.5
kick = 0.6 * np.sin(2 * np.pi * 60 * since_beat) * np.exp(-since_beat * 18)
soundfile.write(sys.argv[1], np.stack([chord + kick, chord + 0.8 * kick], axis=1).astype(np.float32), sr)
PY

$PY -m avtool dance "$SONG" --weights-dir "$WEIGHTS" --num-frames 25 --steps 8 --seed 0 --output-dir outputs/demo
echo "video: outputs/demo/song_generated.mp4 (sidecar: outputs/demo/song_generated.mp4.json)"
