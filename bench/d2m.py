"""Dance2Music-Diffusion speed (CPU by default): the latent U-Net's sampling step, the autoencoder's decode, training.

    python bench/d2m.py [--device cpu] [--repeats 3] [--steps 20] [--full]

1. one guided sampling step of the latent U-Net on one window ([1, 32, 512] latents, 357 motion tokens; CFG runs
   both branches as a batch of 2), at the tiny sizes (and with --full at upstream's sizes, 246 M parameters);
2. the autoencoder's decode of one window (2^18 samples), per decoder step and in all for --decode-steps, tiny (and
   with --full the published dmae1d-ATC32-v3 architecture, 86 M parameters, random weights);
3. training steps/s of `avtool train` on tiny sizes (batch 2, from metrics.jsonl, first step excluded) on
   preprocessed synthetic windows.
Best of --repeats, one thread per process unless --threads. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, weights_folder


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sampling_step(device: str, repeats: int, full: bool) -> None:
    from avtool.models.d2m.config import MOTConfig, UNetConfig
    from avtool.weights.tiny.d2m import TINY_MOT, TINY_UNET

    step_of_size("tiny", MOTConfig(**TINY_MOT), UNetConfig(**TINY_UNET), device, repeats)
    if full:
        step_of_size("full", MOTConfig(), UNetConfig(), device, repeats)


def step_of_size(name: str, mot_config, unet_config, device: str, repeats: int) -> None:
    import torch

    from avtool.models.d2m import WINDOW_LATENTS
    from avtool.models.d2m.diffusion import D2MConfig, D2MDenoiser
    from avtool.models.d2m.mot import MOT

    mot = MOT(mot_config).to(device).eval()
    denoiser = D2MDenoiser(D2MConfig(unet_config, mot_config.num_frames + 1)).to(device).eval()
    parameters = sum(p.numel() for p in denoiser.parameters())
    motion = torch.randn(1, mot_config.num_frames, mot_config.dim, device=device)
    x = torch.randn(1, unet_config.in_channels, WINDOW_LATENTS, device=device)
    with torch.inference_mode():
        tokens, _ = mot(motion)
        denoiser(x, torch.tensor(0.5), tokens, embedding_scale=9.0)  # warm-up
        seconds = best_of(repeats, lambda: denoiser(x, torch.tensor(0.5), tokens, embedding_scale=9.0))
        mot_seconds = best_of(repeats, lambda: mot(motion))
    print(f"[1] {name} U-Net ({parameters / 1e6:.2f} M params), one guided step on [1, 32, {WINDOW_LATENTS}]: "
          f"{seconds * 1000:.1f} ms ({seconds * 50:.2f} s for upstream's 50 steps); MOT once: {mot_seconds * 1000:.1f} ms")


def decode(device: str, repeats: int, steps: int, full: bool) -> None:
    from avtool.models.d2m.autoencoder import DMAEConfig
    from avtool.weights.tiny.d2m import tiny_autoencoder_config

    decode_of_size("tiny", tiny_autoencoder_config(), device, repeats, steps)
    if full:
        decode_of_size("published", DMAEConfig(), device, repeats, steps)


def decode_of_size(name: str, config, device: str, repeats: int, steps: int) -> None:
    import torch

    from avtool.models.d2m import WINDOW_LATENTS
    from avtool.models.d2m.autoencoder import DMAE

    model = DMAE(config).to(device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    latent = torch.rand(1, config.latent_channels, WINDOW_LATENTS, device=device) * 2 - 1
    with torch.inference_mode():
        model.decode(latent, 1, torch.Generator().manual_seed(0))  # warm-up
        one = best_of(repeats, lambda: model.decode(latent, 1, torch.Generator().manual_seed(0)))
        all_steps = best_of(1, lambda: model.decode(latent, steps, torch.Generator().manual_seed(0)))
    print(f"[2] {name} autoencoder ({parameters / 1e6:.2f} M params), decode of one window (2^18 samples): "
          f"{one * 1000:.0f} ms per step, {all_steps:.2f} s for {steps} steps")


def training_speed(weights: Path, device: str, steps: int) -> None:
    import soundfile
    import yaml

    from avtool.weights.tiny.d2m import TINY_MOT, TINY_UNET

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        for k, (genre, music) in enumerate((("gBR", "mBR0"), ("gPO", "mPO1"), ("gLH", "mLH2"), ("gKR", "mKR3"))):
            (tmp / "in").mkdir(exist_ok=True)
            (tmp / "in" / f"{genre}_sBM_cAll_d0{k}_{music}_ch01.pkl").write_bytes(pickle.dumps(
                {"smpl_poses": rng.normal(0, 0.4, (400, 72)), "smpl_trans": rng.normal(0, 40, (400, 3)), "smpl_scaling": np.array([90.0])}))
            soundfile.write(tmp / "in" / f"{music}.wav", rng.normal(0, 0.1, (7 * 44100, 2)).astype(np.float32), 44100)
        env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
        prep = subprocess.run([sys.executable, "-m", "avtool", "preprocess", "d2m", str(tmp / "in"), "-o", str(tmp / "data"),
                               "--weights-dir", str(weights), "-q"], capture_output=True, text=True, env=env, cwd=REPO)
        if prep.returncode:
            raise SystemExit(prep.stderr)
        config = {**yaml.safe_load((REPO / "configs" / "d2m.yaml").read_text()), "data": str(tmp / "data"),
                  "checkpoint_dir": str(tmp / "run"), "batch_size": 2, "num_steps": steps, "save_interval": steps,
                  "model": {"mot": TINY_MOT, "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET.items()}}}
        (tmp / "d2m.yaml").write_text(yaml.safe_dump(config))
        run = subprocess.run([sys.executable, "-m", "avtool", "train", str(tmp / "d2m.yaml"), "--device", device, "-q"],
                             capture_output=True, text=True, env=env, cwd=REPO)
        if run.returncode:
            raise SystemExit(run.stderr)
        rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        rate = (len(rows) - 1) / (rows[-1]["time"] - rows[0]["time"])
        print(f"[3] tiny training, batch 2 on {device}: {rate:.1f} steps/s over {len(rows) - 1} steps "
              f"(loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="also upstream's sizes (random weights)")
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sampling_step(args.device, args.repeats, args.full)
    decode(args.device, args.repeats, args.decode_steps, args.full)
    with weights_folder(args.weights_dir, ["d2m"]) as weights:
        training_speed(weights, args.device, args.train_steps)


if __name__ == "__main__":
    main()
