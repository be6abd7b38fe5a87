"""`avtool tokens` speed on tiny TempoTokens weights (CPU).

    python bench/tokens.py [--steps 25] [--frames 24] [--repeats 3]

1. one 24-frame job of `avtool tokens` (2 s of audio, upstream's defaults): seconds spent in audio encoding
   (BEATs), mapping (mapper + per-frame text conditions), sampling and decoding (+ writing), from its sidecar;
2. our sampling loop (`sample_discrete` + `CFGDenoiser` + the per-frame-conditioned UNet) against diffusers'
   `TextToVideoSDPipeline` on the same tiny UNet and scheduler, with one text condition shared by all frames
   (output_type "latent": no decoding), and against the bare UNet calls the loop cannot avoid: per step,
   the ratio ours / diffusers, and the loop's overhead over the UNet calls. Best of `--repeats` each;
3. the same, with the shared condition given once per frame (the per-frame attention processors' cost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, weights_folder


def job_split(weights: Path, steps: int) -> None:
    from avtool.media.ffmpeg import ffmpeg_exe

    with tempfile.TemporaryDirectory() as tmp:
        sound = Path(tmp) / "drums.wav"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=3:beep_factor=4",
                        "-ac", "2", str(sound)], check=True)
        run = subprocess.run([sys.executable, "-m", "avtool", "tokens", str(sound), "--weights-dir", str(weights), "--seed", "1",
                              "--steps", str(steps), "-q", "--output-dir", tmp], capture_output=True, text=True, cwd=REPO,
                             env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        if run.returncode:
            raise SystemExit(run.stderr)
        timings = json.loads((Path(tmp) / "drums_tokens.mp4.json").read_text())["timings"]
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
    print(f"[1] tokens, 24 frames of 64x64, {steps} steps: {parts}")


def sampling_loops(weights: Path, steps: int, frames: int, repeats: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from avtool.models.tempotokens import FrameConditionedUNet, encode_text
    from avtool.runtime import silence_libraries
    from avtool.sampling import CFGDenoiser, load_scheduler, sample_discrete, scale_initial_noise

    silence_libraries()
    folder = weights / "zeroscope_v2_576w"
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    unet = UNet3DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    size = unet.config.sample_size
    with torch.inference_mode():
        uncond, cond = (encode_text(text_encoder, tokenizer, text, frames) for text in ("", "a drummer on stage"))
    noise = torch.randn(1, 4, frames, size, size, generator=torch.Generator().manual_seed(0))

    def ours(context: torch.Tensor) -> torch.Tensor:
        scheduler = load_scheduler("dpm-multistep", folder / "scheduler")
        scheduler.set_timesteps(steps)
        denoise = CFGDenoiser(FrameConditionedUNet(unet), 25.0)
        return sample_discrete(denoise, scale_initial_noise(noise, scheduler), scheduler, extra_args={"context": context})

    shared_context = torch.stack([uncond[:1], cond[:1]])  # (2, 1, L, D): one condition for all frames
    per_frame_context = torch.stack([uncond, cond])  # (2, F, L, D): the same condition given once per frame

    stock = UNet3DConditionModel.from_pretrained(folder / "unet").eval()  # without our attention processors
    scheduler = DPMSolverMultistepScheduler.from_config(load_scheduler("dpm-multistep", folder / "scheduler").config)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=stock, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def theirs() -> torch.Tensor:
        return pipe(prompt_embeds=cond[:1], negative_prompt_embeds=uncond[:1], num_frames=frames, height=size * 8,
                    width=size * 8, num_inference_steps=steps, guidance_scale=25.0, latents=noise.clone(),
                    output_type="latent").frames

    x, t, shared = torch.cat([noise, noise]), torch.tensor(500), torch.cat([uncond[:1], cond[:1]])

    def unet_calls() -> torch.Tensor:
        for _ in range(steps):
            out = stock(x, t, encoder_hidden_states=shared, return_dict=False)[0]
        return out

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                fn()
            times.append(time.perf_counter() - start)
        return min(times)

    unet_s, theirs_s = best(unet_calls), best(theirs)
    ours_s, per_frame_s = best(lambda: ours(shared_context)), best(lambda: ours(per_frame_context))
    with torch.inference_mode():
        same = torch.allclose(ours(shared_context), theirs(), atol=1e-4)
        same_per_frame = torch.allclose(ours(per_frame_context), theirs(), atol=1e-4)
    print(f"[2] {steps} DPM-Solver++ steps, CFG 25, {frames} frames of {size}x{size} latents, one shared condition: "
          f"ours {1000 * ours_s / steps:.1f} ms/step, diffusers TextToVideoSDPipeline {1000 * theirs_s / steps:.1f} ms/step "
          f"({ours_s / theirs_s:.2f}x), the UNet calls alone {1000 * unet_s / steps:.1f} ms/step "
          f"(loop overhead {100 * (ours_s - unet_s) / unet_s:+.1f}%); same latents: {same}")
    print(f"[3] the same condition given per frame (TempoTokens' path): {1000 * per_frame_s / steps:.1f} ms/step "
          f"({per_frame_s / ours_s:.2f}x the shared one); same latents: {same_per_frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with weights_folder(args.weights_dir, ["tempotokens"]) as weights:
        job_split(weights, args.steps)
        sampling_loops(weights, args.steps, args.frames, args.repeats)

if __name__ == "__main__":
    main()
