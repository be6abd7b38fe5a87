#!/usr/bin/env bash
# The CUDA paths, on a machine with a GPU and tiny weights (CI has no GPU, so this is run by hand):
#   1. the tests that need CUDA (skipped elsewhere);
#   2. every generation command on --device cuda (default dtype: upstream's), twice with the same seed: the two
#      outputs must be the same bits; score also with --runner eager against the cuda-graph default;
#   3. tiny trainings on CUDA (MusicInfuser and D2M, bf16 autocast), then generation from their results.
# Prints one line per check and the seconds each command took.
# Usage: [COMMANDS="dance tokens d2m"] [DEVICE=cpu] bash bench/cuda.sh [WORK_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WORK=${1:-/tmp/avtool-cuda}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu runs the same checks on the CPU (a dry run of this script)
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

$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA)")'
check tests-cuda $PY -m pytest -q -p no:cacheprovider tests/test_dance_pipeline.py tests/test_sampling.py tests/test_step_runner.py -k "cuda"
grep -E "Error|passed|failed" "$WORK/tests-cuda.log" | head -8

W=$WORK/weights
check weights $PY -m avtool download-weights --tiny --dir "$W"
$PY - "$WORK/song.wav" "$WORK/face.png" "$WORK/aist" <<'PY'
import pickle
import sys
from pathlib import Path

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
aist = Path(sys.argv[3])
aist.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for name, music in (("gBR_sBM_cAll_d04_mBR0_ch01", "mBR0"), ("gPO_sBM_cAll_d10_mPO1_ch02", "mPO1")):
    with open(aist / f"{name}.pkl", "wb") as file:
        pickle.dump({"smpl_poses": rng.normal(0, 0.4, (420, 72)), "smpl_trans": rng.normal(0, 40, (420, 3)),
                     "smpl_scaling": np.array([90.0])}, file)
    soundfile.write(aist / f"{music}.wav", np.tile(song, 2)[: 7 * sr].astype(np.float32), sr)
PY

# each generation command twice with the same seed; COMMANDS picks some (dance always runs: the trainings use its video)
COMMANDS=${COMMANDS:-"dance score tokens animate d2m"}
for run in a b; do
    OPTS=(--weights-dir "$W" --device "$DEVICE" --seed 3 --output-dir "$WORK/$run" --overwrite -q)
    check "dance-$run" $PY -m avtool dance "$WORK/song.wav" "${OPTS[@]}" --num-frames 31 --steps 8
    [[ $COMMANDS == *score* ]] && check "score-$run" $PY -m avtool score "$WORK/$run/song_generated.mp4" "${OPTS[@]}"
    [[ $COMMANDS == *tokens* ]] && check "tokens-$run" $PY -m avtool tokens "$WORK/song.wav" "${OPTS[@]}" --steps 8
    [[ $COMMANDS == *animate* ]] && check "animate-$run" $PY -m avtool animate --image "$WORK/face.png" --prompt "(1girl, solo:1)" \
        "${OPTS[@]}" --time-size 24 --steps 4
    [[ $COMMANDS == *d2m* ]] && check "d2m-$run" $PY -m avtool score --model d2m "$WORK/aist/gBR_sBM_cAll_d04_mBR0_ch01.pkl" \
        "${OPTS[@]}" --steps 8 --decode-steps 4
done
same dance "$WORK/a/song_generated.mp4" "$WORK/b/song_generated.mp4"
[[ $COMMANDS == *d2m* ]] && same d2m "$WORK/a/gBR_sBM_cAll_d04_mBR0_ch01_scored.wav" "$WORK/b/gBR_sBM_cAll_d04_mBR0_ch01_scored.wav"
[[ $COMMANDS == *tokens* ]] && same tokens "$WORK/a/song_tokens.mp4" "$WORK/b/song_tokens.mp4"
[[ $COMMANDS == *animate* ]] && same animate "$WORK/a/face_animated.mp4" "$WORK/b/face_animated.mp4"
if [[ $COMMANDS == *score* ]]; then
    same score "$WORK/a/song_generated_scored.wav" "$WORK/b/song_generated_scored.wav"
    check score-eager $PY -m avtool score "$WORK/a/song_generated.mp4" --weights-dir "$W" --device "$DEVICE" --seed 3 \
        --runner eager -o "$WORK/eager.mp4" --overwrite -q
    if cmp -s "$WORK/eager.wav" "$WORK/a/song_generated_scored.wav"; then echo "ok    score: eager = cuda-graph"
    else echo "note  score: eager and cuda-graph music differ (fp16 kernels differ between the two; sampled tokens can diverge)"; fi
fi
# trainings on CUDA: MusicInfuser (bf16 autocast) on clips of the dance video, D2M (bf16 autocast) on the motions
check preprocess-dance $PY -m avtool preprocess dance "$WORK/a" -o "$WORK/clips" --num-frames 7 --crop center --weights-dir "$W" --device "$DEVICE" -q
$PY - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

import yaml

from avtool.weights.tiny.d2m import TINY_MOT, TINY_UNET
from avtool.weights.tiny.musicinfuser import TINY_AUDIO_LAYERS

work = Path(sys.argv[1])
(work / "mi.yaml").write_text(json.dumps({
    "train_data_dir": str(work / "clips"), "seed": 3, "audio_mode": "cross_attn", "audio_cross_attn_layers": list(TINY_AUDIO_LAYERS),
    "model": {"type": "lora+audio", "kwargs": {"qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 4, "out_proj_lora_rank": 4,
                                               "out_proj_lora_alpha": 4}},
    "optimizer": {"lr": 1e-3}, "training": {"num_steps": 6, "warmup_steps": 1, "save_interval": 3}}))
d2m = yaml.safe_load(Path("configs/d2m.yaml").read_text())
d2m.update(data=str(work / "d2m_data"), checkpoint_dir=str(work / "d2m_run"), batch_size=2, num_steps=6, save_interval=3,
           model={"mot": TINY_MOT, "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET.items()}})
(work / "d2m.yaml").write_text(yaml.safe_dump(d2m))
PY
check train-musicinfuser $PY -m avtool train "$WORK/mi.yaml" --run-dir "$WORK/mi_run" --weights-dir "$W" --device "$DEVICE" -q
check preprocess-d2m $PY -m avtool preprocess d2m "$WORK/aist" -o "$WORK/d2m_data" --weights-dir "$W" --device "$DEVICE" -q
check train-d2m $PY -m avtool train "$WORK/d2m.yaml" --weights-dir "$W" --device "$DEVICE" -q
check score-trained-d2m $PY -m avtool score --model d2m "$WORK/aist/gPO_sBM_cAll_d10_mPO1_ch02.pkl" --checkpoint "$WORK/d2m_run" \
    --weights-dir "$W" --device "$DEVICE" --seed 1 -o "$WORK/trained_d2m.wav" -q --steps 8 --decode-steps 4
tail -n 1 "$WORK/mi_run/metrics.jsonl" "$WORK/d2m_run/metrics.jsonl" 2>/dev/null

for json in "$WORK"/a/*.json; do
    $PY -c 'import json, sys; r = json.load(open(sys.argv[1])); print("      ", r["subcommand"], r.get("device"), r.get("dtype"), r.get("timings"))' "$json"
done
exit $failed
