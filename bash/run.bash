#!/usr/bin/env bash
# Training (MusicInfuser, TempoTokens, Dance2Music-Diffusion), with MusicInfuser's interface (music_infuser/run.bash):
#   bash/run.bash -c CONFIG -n NUM_GPUS [-- extra avtool train options, e.g. --resume]
# runs `avtool train CONFIG`, under `torchrun --nproc-per-node NUM_GPUS` when NUM_GPUS > 1 (gloo on CPU, NCCL on GPUs).
# PY overrides the interpreter (default: this checkout's .venv, else python3).
set -euo pipefail

usage() {
    echo "usage: $0 -c CONFIG -n NUM_GPUS [-- avtool train options]" >&2
    exit 2
}

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CONFIG="" PROCESSES=1
while getopts ":c:n:h" flag; do
    case "$flag" in
        c) CONFIG="$OPTARG" ;;
        n) PROCESSES="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
if [ -z "$CONFIG" ] || ! [[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
    usage
fi

if [ -z "${PY:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ "$PROCESSES" -gt 1 ]; then
    exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$PROCESSES" -m avtool train "$CONFIG" "$@"
fi
exec "$PY" -m avtool train "$CONFIG" "$@"
