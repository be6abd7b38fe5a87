#!/usr/bin/env bash
# Demo (`make demo`): every generation command on tiny random weights — builds weights/tiny if missing, synthesises
# a short song, an image and a dance's motion (no download), then: song -> dance video (dance), that video -> music
# (score), song -> video (tokens), image -> video (animate), motion -> music (score --model d2m). Prints where the
# outputs are. Under a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
WEIGHTS=weights/tiny
SONG=outputs/demo/song.wav
mkdir -p outputs/demo

MODELS="mochi-1-preview musicinfuser vidmuse tempotokens musev d2m"
if ! $PY -m avtool download-weights --verify $MODELS --dir "$WEIGHTS" -q >/dev/null 2>&1; then
    $PY -m avtool download-weights --tiny $MODELS --dir "$WEIGHTS"
fi

$PY - "$SONG" <<'PY'
import pickle
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

# a soft colour gradient with a disc: the first frame for animate
import cv2

y, x = np.mgrid[0:256, 0:256] / 255.0
image = np.stack([x, y, 1 - x], axis=-1) * 200
cv2.circle(image, (128, 128), 60, (240, 220, 200), -1)
cv2.imwrite(sys.argv[1].replace("song.wav", "face.png"), image.astype(np.uint8))

# 7 s of AIST++-style SMPL motion at 60 fps: joints swinging at 120 bpm around a random pose
frames = np.arange(420)
pose = np.random.default_rng(0).normal(0, 0.3, 72) + 0.4 * np.sin(2 * np.pi * 2 * frames / 60)[:, None]
with open(sys.argv[1].replace("song.wav", "gBR_sBM_cAll_d04_mBR0_ch01.pkl"), "wb") as file:
    pickle.dump({"smpl_poses": pose, "smpl_trans": np.zeros((420, 3)), "smpl_scaling": np.array([1.0])}, file)
PY

OPTS=(--weights-dir "$WEIGHTS" --seed 0 --output-dir outputs/demo --overwrite)
$PY -m avtool dance "$SONG" "${OPTS[@]}" --num-frames 31 --steps 8
$PY -m avtool score outputs/demo/song_generated.mp4 "${OPTS[@]}"
$PY -m avtool tokens "$SONG" "${OPTS[@]}" --steps 8 --prompt "a drummer on stage"
$PY -m avtool animate --image outputs/demo/face.png --prompt "(1girl, solo:1), (eye blinks:1.8)" "${OPTS[@]}" --time-size 24 --steps 4
$PY -m avtool score --model d2m outputs/demo/gBR_sBM_cAll_d04_mBR0_ch01.pkl "${OPTS[@]}" --steps 8 --decode-steps 4
echo "dance:   outputs/demo/song_generated.mp4"
echo "score:   outputs/demo/song_generated_scored.mp4 (+ .wav)"
echo "tokens:  outputs/demo/song_tokens.mp4"
echo "animate: outputs/demo/face_animated.mp4"
echo "d2m:     outputs/demo/gBR_sBM_cAll_d04_mBR0_ch01_scored.wav     (each with its .json sidecar)"
