"""`avtool score` speed and memory on tiny VidMuse weights (CPU).

    python bench/score.py [--tokens 200] [--seconds 70] [--long 600]

1. the token loop (static KV cache, CFG in one batch, greedy), eager and compiled, against transformers' `generate()`
   on the same LM, the same video conditioning and length: tokens per second, and whether the codes are the same;
2. `avtool score` on a `--seconds` video and on a `--long` video, each in a fresh process: wall time and peak RSS
   (frames are read and codes decoded per window, so the long video's peak should stay near the short one's).
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from common import measure_avtool, weights_folder

if TYPE_CHECKING:
    import torch
    from transformers import MusicgenForCausalLM

Result = TypeVar("Result")


def token_loop_vs_generate(weights: Path, tokens: int) -> None:
    import torch

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
    from avtool.sampling import StepRunner, sample_tokens
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
    first = first_input(prompt, tokens, special)
    step = VidMuseStep(ours_model.lm, rows=2, max_steps=tokens + codebooks - 1, max_video_tokens=cond.shape[1])

    def our_loop(runner):
        step.set_conditioning(cond)
        out = sample_tokens(runner, first, generation_steps(tokens, 0, codebooks), temperature=0, cfg_scale=3.0,
                            constrain=delay_constraint(prompt, tokens, special))
        return undo_delay_pattern(torch.cat([first, out], dim=-1))

    steps = tokens + codebooks - 1
    with torch.inference_mode():
        theirs, their_seconds = best_of_two(lambda: transformers_generate(their_model.lm, cond, tokens, special))
        print(f"[1] {tokens} frames ({steps} steps), CFG 3.0, greedy, best of 2 runs: transformers generate() "
              f"{steps / their_seconds:7.1f} steps/s")
        for mode in ("eager", "compile"):  # compile: the first run compiles, the second is timed
            ours, seconds = best_of_two(functools.partial(our_loop, StepRunner(step, mode)))
            print(f"    our loop ({mode:7s}) {steps / seconds:7.1f} steps/s ({their_seconds / seconds:.2f}x); "
                  f"same codes: {torch.equal(theirs, ours)}")
        step.set_conditioning(cond)
        kernels_per_token(step, first, steps)


VIEW_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::transpose", "aten::t", "aten::permute",
            "aten::slice", "aten::select", "aten::expand", "aten::as_strided", "aten::unsqueeze", "aten::squeeze",
            "aten::_unsafe_view", "aten::detach", "aten::alias", "aten::empty", "aten::empty_strided", "aten::lift_fresh",
            "aten::split", "aten::chunk", "aten::unbind", "aten::narrow", "aten::flatten", "aten::view_as", "aten::resolve_conj",
            "aten::resolve_neg", "aten::result_type", "aten::size", "aten::stride", "aten::contiguous", "aten::to", "aten::_to_copy"}


def kernels_per_token(step, first: torch.Tensor, steps: int) -> None:
    """The compute ops one eager token step runs: leaf aten ops that are not views or allocations, what a GPU would
    launch one kernel each for. Counted on the CPU with torch.profiler over one step after a warm-up."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    tokens, position = first[:, :, :1].repeat(2, 1, 1), torch.tensor(1)
    with torch.inference_mode():
        step(tokens, torch.tensor(0))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(tokens, position)
    leaves = [e for e in prof.events() if e.name.startswith("aten::")
              and not any(c.name.startswith("aten::") for c in e.cpu_children) and e.name not in VIEW_OPS]
    print(f"    one token step in eager mode: {len(leaves)} compute ops (~kernel launches on CUDA); under --runner "
          "cuda-graph the same step is 1 graph replay, plus one copy per input buffer (2) and one output copy")


def best_of_two(run: Callable[[], Result]) -> tuple[Result, float]:
    """`run()`'s result and its shortest wall time of two runs (the first pays warm-up and compilation)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return result, min(times)


def transformers_generate(lm: MusicgenForCausalLM, cond: torch.Tensor, frames: int, special: int) -> torch.Tensor:
    """`MusicgenForCausalLM.generate()` greedy with CFG 3.0 on `cond` = `[cond; uncond]`: codes `(1, K, frames)`.

    Standalone (not inside MusicgenForConditionalGeneration) it needs two things given, or it decodes something else:
    an EncoderDecoderCache (it would build a DynamicCache, and every cross-attention layer would append the video
    keys/values to its self-attention cache, shifting the positions too), and an attention mask of ones (it would
    infer one from the pad token, which is also the start token, and mask out step 0).
    """
    import torch
    from transformers import GenerationConfig
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    codebooks = lm.config.num_codebooks
    config = GenerationConfig(pad_token_id=special, bos_token_id=special, decoder_start_token_id=special, do_sample=False,
                              guidance_scale=3.0, max_new_tokens=frames + codebooks - 1, num_return_sequences=1, num_beams=1)
    cache = EncoderDecoderCache(DynamicCache(config=lm.config), DynamicCache(config=lm.config))
    return lm.generate(input_ids=torch.full((codebooks, 1), special), attention_mask=torch.ones(codebooks, 1, dtype=torch.long),
                       encoder_hidden_states=cond, cache=cache, generation_config=config).reshape(1, codebooks, -1)


def score_runs(weights: Path, lengths: list[float]) -> None:
    from avtool.media.ffmpeg import ffmpeg_exe

    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            video = Path(tmp) / f"v{seconds:g}.mp4"
            subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={seconds}",
                            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(video)], check=True)
            code, wall, peak = measure_avtool("score", video, "--weights-dir", weights, "--seed", "1", "-q",
                                              "--output-dir", Path(tmp) / f"out{seconds:g}")
            print(f"[2] score of a {seconds:g} s 320x240 video: exit {code}, {wall} s, peak RSS {peak} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=70)
    parser.add_argument("--long", type=float, default=600)
    args = parser.parse_args()
    with weights_folder(args.weights_dir, ["vidmuse"]) as weights:
        token_loop_vs_generate(weights, args.tokens)
        score_runs(weights, [args.seconds, args.long])


if __name__ == "__main__":
    main()
