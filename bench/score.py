"""`avtool score` speed and memory on tiny VidMuse weights (CPU).

    python bench/score.py [--tokens 200] [--seconds 70] [--long 600]

1. the token loop (static KV cache, CFG in one batch, greedy) against transformers' `generate()` on the same LM,
   the same video conditioning and length: tokens per second, and whether the codes are the same;
2. `avtool score` on a `--seconds` video and on a `--long` video, each in a fresh process: wall time and peak RSS
   (frames are read per window, so the long video's peak should stay near the short one's).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHILD = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run([sys.executable, "-m", "avtool", "score", *sys.argv[1:]]).returncode
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{code} {time.perf_counter() - start:.1f} {peak:.0f}")
"""


def token_loop_vs_generate(weights: Path, tokens: int) -> None:
    import torch
    from transformers import GenerationConfig

    from avtool.models.vidmuse import (
        VidMuseStep,
        delay_constraint,
        first_input,
        generation_steps,
        load_vidmuse,
        undo_delay_pattern,
    )
    from avtool.pipelines import score as pipeline
    from avtool.runtime import silence_libraries
    from avtool.sampling import sample_tokens
    from avtool.weights.loading import load_checkpoint

    silence_libraries()
    checked = pipeline.check_weights(weights)

    def load():
        return load_vidmuse(load_checkpoint(checked.state_dict), load_checkpoint(checked.compression), checked.codec, checked.clip)

    ours_model, their_model = load(), load()  # the cached step changes its LM's position table: one LM each
    torch.manual_seed(0)
    size = ours_model.frame_size
    cond = ours_model.cfg_conditioning(torch.randint(0, 255, (1, 20, 3, size, size)), torch.randint(0, 255, (1, 32, 3, size, size)))
    codebooks, special = ours_model.num_codebooks, ours_model.special_token
    prompt = torch.zeros(1, codebooks, 0, dtype=torch.long)
    step = VidMuseStep(ours_model.lm, rows=2, max_steps=tokens + codebooks - 1, max_video_tokens=cond.shape[1])
    with torch.inference_mode():
        step.set_conditioning(cond)
        first = first_input(prompt, tokens, special)
        start = time.perf_counter()
        out = sample_tokens(step, first, generation_steps(tokens, 0, codebooks), temperature=0, cfg_scale=3.0,
                            constrain=delay_constraint(prompt, tokens, special))
        ours_seconds = time.perf_counter() - start
        ours = undo_delay_pattern(torch.cat([first, out], dim=-1))
        config = GenerationConfig(pad_token_id=special, bos_token_id=special, decoder_start_token_id=special, do_sample=False,
                                  guidance_scale=3.0, max_new_tokens=tokens + codebooks - 1, num_return_sequences=1, num_beams=1)
        start = time.perf_counter()
        theirs = their_model.lm.generate(input_ids=torch.full((codebooks, 1), special), encoder_hidden_states=cond,
                                         generation_config=config)
        their_seconds = time.perf_counter() - start
    steps = tokens + codebooks - 1
    same = theirs.shape[-1] == tokens and torch.equal(theirs.reshape(1, codebooks, -1), ours)
    print(f"[1] {tokens} frames ({steps} steps), CFG 3.0, greedy: our loop {steps / ours_seconds:7.1f} steps/s, "
          f"transformers generate() {steps / their_seconds:7.1f} steps/s ({their_seconds / ours_seconds:.2f}x); same codes: {same}")


def score_runs(weights: Path, lengths: list[float]) -> None:
    from avtool.media.ffmpeg import ffmpeg_exe

    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            video = Path(tmp) / f"v{seconds:g}.mp4"
            subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={seconds}",
                            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(video)], check=True)
            out = subprocess.run([sys.executable, "-c", CHILD, str(video), "--weights-dir", str(weights), "--seed", "1", "-q",
                                  "--output-dir", str(Path(tmp) / f"out{seconds:g}")], capture_output=True, text=True,
                                 cwd=REPO, env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
            code, wall, peak = out.stdout.split()
            print(f"[2] score of a {seconds:g} s 320x240 video: exit {code}, {wall} s, peak RSS {peak} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=70)
    parser.add_argument("--long", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights_dir
        if weights is None:
            from avtool.weights.tiny import build_tiny

            weights = Path(tmp) / "weights"
            build_tiny(weights, ["vidmuse"])
        token_loop_vs_generate(weights, args.tokens)
        score_runs(weights, [args.seconds, args.long])


if __name__ == "__main__":
    main()
