#!/usr/bin/env bash
# MusicInfuser training data, with upstream's interface (music_infuser/preprocess.bash):
#   bash/preprocess.bash -v VIDEOS_DIR -o OUTPUT_DIR -w WEIGHTS_DIR -n NUM_FRAMES
# cuts clips of NUM_FRAMES/30 + 0.09 s (to 0.1 s) and caches their VAE latents, T5 embeddings and wav2vec2 features
# through `avtool preprocess dance`. PY overrides the interpreter (default: this checkout's .venv, else python3).
set -euo pipefail

usage() {
    echo "usage: $0 -v VIDEOS_DIR -o OUTPUT_DIR -w WEIGHTS_DIR -n NUM_FRAMES" >&2
    exit 2
}

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VIDEOS="" OUTPUT="" WEIGHTS="" NUM_FRAMES=""
while getopts ":v:o:w:n:h" flag; do
    case "$flag" in
        v) VIDEOS="$OPTARG" ;;
        o) OUTPUT="$OPTARG" ;;
        w) WEIGHTS="$OPTARG" ;;
        n) NUM_FRAMES="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -gt 0 ] || [ -z "$VIDEOS" ] || [ -z "$OUTPUT" ] || [ -z "$WEIGHTS" ] || [ -z "$NUM_FRAMES" ]; then
    usage
fi

if [ -z "${PY:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m avtool preprocess dance "$VIDEOS" -o "$OUTPUT" --weights-dir "$WEIGHTS" --num-frames "$NUM_FRAMES"
