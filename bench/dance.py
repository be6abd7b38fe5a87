"""`avtool dance` on tiny weights, CPU:

1. per-step wall time of our sampling loop vs diffusers' MochiPipeline (same base weights, steps, size, CFG,
   precomputed prompt embeddings), and each loop's overhead beyond the transformer forwards;
2. k seeds in one `avtool dance` process vs k separate processes (wall time);
3. peak RSS of the VAE decode with and without tiling at a larger tiny resolution (each in a fresh interpreter).

Usage: python bench/dance.py [--weights-dir weights/tiny]   (builds tiny weights in a temp folder if none given)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES, STEPS, CFG, SEED, REPEATS = 25, 8, 6.0, 0, 3
DECODE_SIZE, DECODE_FRAMES = (480, 848), 7


class ForwardClock:
    """Sums the wall time spent inside a module's forward calls."""

    def __init__(self, module) -> None:
        self.seconds, self._start = 0.0, 0.0
        self._hooks = [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._leave)]

    def _enter(self, *_) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_) -> None:
        self.seconds += time.perf_counter() - self._start

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def loop_vs_mochi_pipeline(weights_dir: Path) -> None:
    import torch
    from diffusers import MochiPipeline

    from avtool.models.mochi import MochiFlowModel
    from avtool.pipelines import dance as pipeline
    from avtool.runtime import silence_libraries
    from avtool.sampling import CFGDenoiser, StepRunner, linear_quadratic_sigmas

    silence_libraries()
    weights = pipeline.check_weights(weights_dir)
    height, width = pipeline.resolve_size(pipeline.DanceRequest(), weights)
    text, mask = pipeline.encode_prompt(weights, pipeline.DEFAULT_PROMPT, "cpu", torch.float32)

    transformer = pipeline.load_transformer(weights, "cpu", torch.float32, adapter=False)
    step = StepRunner(CFGDenoiser(MochiFlowModel(transformer), CFG), "eager")
    sigmas = linear_quadratic_sigmas(STEPS)
    noise = pipeline.initial_noise(SEED, FRAMES, height, width)

    mochi = MochiPipeline.from_pretrained(weights.mochi, force_zeros_for_empty_prompt=True)
    mochi.set_progress_bar_config(disable=True)
    call = dict(prompt_embeds=text[1:], prompt_attention_mask=mask[1:], negative_prompt_embeds=text[:1],
                negative_prompt_attention_mask=mask[:1], num_frames=FRAMES, height=height, width=width,
                guidance_scale=CFG, output_type="latent", num_inference_steps=STEPS)

    runs = {
        "avtool sample_euler_flow+StepRunner(eager)": (transformer, lambda: pipeline.sample_latents(
            step, noise, sigmas, text, mask, None, quiet=True)),
        "diffusers MochiPipeline (latent out)": (mochi.transformer, lambda: mochi(
            **call, generator=torch.Generator().manual_seed(SEED))),
    }
    best = {name: (float("inf"), 0.0) for name in runs}
    for _ in range(REPEATS):  # interleaved, best of REPEATS: the machine is shared
        for name, (model, run) in runs.items():
            clock = ForwardClock(model)
            start = time.perf_counter()
            run()
            total = time.perf_counter() - start
            clock.remove()
            best[name] = min(best[name], (total, clock.seconds))

    print(f"[1] sampling loop, {FRAMES} frames at {width}x{height}, {STEPS} steps, CFG {CFG} (one batched forward per step), "
          f"torch threads {torch.get_num_threads()}, best of {REPEATS}, load average {os.getloadavg()[0]:.1f}")
    for name, (total, forwards) in best.items():
        overhead = total - forwards
        print(f"    {name:40s} {1000 * total / STEPS:7.2f} ms/step   transformer {1000 * forwards / STEPS:7.2f} ms/step   "
              f"overhead {1000 * overhead / STEPS:6.2f} ms/step ({100 * overhead / total:4.1f}%)")


def seeds_one_process_vs_many(weights_dir: Path, k: int = 3) -> None:
    from avtool.media.ffmpeg import ffmpeg_exe

    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "song.wav"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(200+150*t)*t):s=44100:d=6",
                        str(song)], check=True)
        base = [sys.executable, "-m", "avtool", "dance", str(song), "--weights-dir", str(weights_dir), "--num-frames", "13",
                "--steps", "8", "-q"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        def timed(cmd: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            return time.perf_counter() - start

        seeds = [str(s) for s in range(1, k + 1)]
        one = timed(base + [arg for s in seeds for arg in ("--seed", s)] + ["--output-dir", f"{tmp}/one"])
        many = sum(timed(base + ["--seed", s, "--output-dir", f"{tmp}/many{s}"]) for s in seeds)
    print(f"[2] {k} seeds, 13 frames, 8 steps: one process {one:.2f} s, {k} processes {many:.2f} s "
          f"({many / one:.2f}x; {(many - one) / (k - 1):.2f} s saved per extra seed)")


DECODE_CHILD = r"""
import json, resource, sys, time
import torch
from diffusers import AutoencoderKLMochi
vae = AutoencoderKLMochi.from_pretrained(sys.argv[1]).eval()
if sys.argv[2] == "tiled":
    vae.enable_tiling()
height, width, frames = map(int, sys.argv[3:6])
latents = torch.randn(1, 12, (frames - 1) // 6 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
with torch.inference_mode():
    video = vae.decode(latents, return_dict=False)[0]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"shape": list(video.shape), "seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak}))
"""


def decode_memory(weights_dir: Path) -> None:
    from avtool.pipelines import dance as pipeline

    height, width = DECODE_SIZE
    model = pipeline.memory_model(pipeline.check_weights(weights_dir))
    print(f"[3] VAE decode of {DECODE_FRAMES} frames at {width}x{height} (tiny VAE), fresh interpreter each")
    for mode in ("full", "tiled"):
        estimate = pipeline.decode_bytes(model, DECODE_FRAMES, DECODE_SIZE, 4, tiling=mode == "tiled") / 1e6
        out = subprocess.run([sys.executable, "-c", DECODE_CHILD, str(weights_dir / "mochi-1-preview" / "vae"), mode,
                              str(height), str(width), str(DECODE_FRAMES)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"    {mode:5s} peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['peak_rss_mb'] - r['rss_before_mb']:6.0f} MB over the "
              f"loaded model; dance's estimate {estimate:6.0f} MB), {r['seconds']:5.1f} s, output {r['shape']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = args.weights_dir
        if weights_dir is None:
            from avtool.weights.tiny import build_tiny

            weights_dir = Path(tmp) / "weights"
            build_tiny(weights_dir, ["mochi-1-preview", "musicinfuser"])
        loop_vs_mochi_pipeline(weights_dir)
        seeds_one_process_vs_many(weights_dir)
        decode_memory(weights_dir)


if __name__ == "__main__":
    main()
