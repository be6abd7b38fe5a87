"""`avtool train` (MusicInfuser) on tiny weights, CPU: speed, checkpoints, and whether training teaches the model
motion that follows the music.

1. Speed: steps/s of `avtool train` for 1 process and for 2 gloo processes under torchrun (from metrics.jsonl,
   first step excluded), and the checkpoint's write time (`save_checkpoint` timed on the task's own state) and size.
2. Learning: synthetic clips whose picture (a smooth random texture) jumps to a new offset on every beat of a click
   track at a random tempo; `avtool preprocess dance` at the tiny size; first a check that the tiny VAE carries the
   beat motion through encode+decode (AV-Align and motion-curve correlation of the clip vs its reconstruction). The
   random tiny VAE does not (its reconstruction flickers on every frame, AV-Align at chance), so by default the tiny
   VAE is first trained as a plain autoencoder (pixel MSE + a small KL) on fresh beat windows for --train-vae steps
   (then, with --refine-decoder, its decoder alone at a lower learning rate, also taught the frame-to-frame change
   and to decode noisy latents to clean frames: less sub-pixel flicker), checked again,
   and used for everything after (preprocessing and `avtool dance`'s decode). With --pretrain-dit, the tiny DiT is
   then pretrained as a plain video model (flow matching, no audio) on other beat clips, as the real
   Mochi comes pretrained (--dit-size: a new, larger DiT instead of --tiny's 4 blocks x 32 wide, whose samples hold
   none of the data's jumps), and used for everything after (the adapter trains on it, dance samples with it). With
   --train-wav2vec, the tiny wav2vec2 is first trained so that each feature frame carries the sound around it, as the
   real one's transformer context does: upstream hands each latent frame (6 video frames) one feature frame, and the
   random tiny one carries only its own 20 ms. Then
   `avtool train` for --steps steps, `avtool dance` on --seeds held-out songs (new tempi), and `avtool eval --metric
   av-align` of
     trained      the trained adapter, conditioned on song A, scored against song A (the music muxed in);
     control a    the trained adapter, same seed, conditioned on another held-out song B, its picture scored against
                  song A (the music muxed into the trained run's video): does the motion follow the music it was given?
     control b    the fresh adapter the training starts from (zero LoRA B and cross-attention output: the bare DiT),
                  conditioned on and scored against song A.
   and the loss curve (metrics.jsonl summary; `avtool train --plot` writes loss.png), how much the trained model's
   loss depends on the audio, on its training clips and on held-out clips (own vs another clip's audio), and whether
   the cross-attention can line the music up with the frames at all (time routing: the latent frame read out of the
   hidden state it receives, and its attention on the token's own audio frame), whether the generator draws the
   data's motion at all, and the motion at each offset from the beats.

Prints figures, asserts nothing.

Usage: python bench/train.py [--clips 16] [--steps 3000] [--seeds 8] [--train-vae STEPS] [--refine-decoder STEPS]
                             [--pretrain-dit STEPS] [--dit-size LAYERS HEADS HEAD_DIM] [--train-wav2vec STEPS]
                             [--tempo LOW HIGH] [--num-frames N] [--look random|fixed] [--attention-window FRAMES]
                             [--weights-dir DIR] [--work DIR] [--skip-speed] [--skip-learning]

The run whose figures close the learning question (about 50 min on 2 cores; the defaults are a quick smoke run):
  python bench/train.py --skip-speed --clips 128 --look fixed --num-frames 37 --tempo 100 160 --train-vae 1800 \
      --refine-decoder 2500 --pretrain-dit 12000 --dit-size 6 6 32 --train-wav2vec 1000 --attention-window 0 \
      --steps 12000 --seeds 48
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import weights_folder  # noqa: E402

FPS, SR = 30, 44100
NUM_FRAMES = 19  # 6k+1; tiny Mochi latent: 4 frames of 4x6
SOURCE_SIZE = (72, 48)  # (w, h): preprocess crops its 48x32 window out of it without scaling
TEMPO_RANGE = (180.0, 300.0)  # BPM: 2-4 beats in a 0.7 s clip
JUMP = 6  # pixels the texture moves on a beat
LOOK_SEED: int | None = None  # --look fixed: every clip shows the texture and colour of this seed
TINY_AUDIO_LAYERS = (1, 3)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------------------
# Media made here


def ffmpeg_exe() -> str:
    from avtool.media.ffmpeg import ffmpeg_exe as exe

    return exe()


def click_track(seconds: float, bpm: float, phase: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mono float32 samples at SR, beat times): a decaying noise burst + 60 Hz kick on each beat, silence between."""
    n = int(round(seconds * SR))
    y = np.zeros(n, np.float32)
    beats = np.arange(phase, seconds, 60.0 / bpm)
    t = np.arange(int(0.06 * SR)) / SR
    hit = (rng.standard_normal(len(t)) * 0.5 + np.sin(2 * np.pi * 60 * t)) * np.exp(-t / 0.012)
    for b in beats:
        i = int(round(b * SR))
        part = hit[: n - i]
        y[i : i + len(part)] += part.astype(np.float32)
    return (0.5 * y / max(1e-6, np.abs(y).max())).astype(np.float32), beats


def beat_frames(seconds: float, beats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(frames, h, w, 3) uint8: a smooth random texture that jumps JUMP px in a random direction on each beat (the
    texture and colour drawn from `rng`, or with --look fixed the same for every clip)."""
    w, h = SOURCE_SIZE
    look = rng if LOOK_SEED is None else np.random.default_rng(LOOK_SEED)
    noise = look.standard_normal((h * 2, w * 2))
    spectrum = np.fft.fft2(noise)
    fy, fx = np.fft.fftfreq(h * 2)[:, None], np.fft.fftfreq(w * 2)[None, :]
    texture = np.real(np.fft.ifft2(spectrum * np.exp(-(fx**2 + fy**2) / (2 * 0.05**2))))
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    colour = look.uniform(0.3, 1.0, 3)
    count = int(round(seconds * FPS))
    jumps = set(int(round(b * FPS)) for b in beats)
    dy = dx = 0
    frames = np.empty((count, h, w, 3), np.uint8)
    for k in range(count):
        if k in jumps:
            angle = rng.uniform(0, 2 * np.pi)
            dy, dx = dy + int(round(JUMP * np.sin(angle))), dx + int(round(JUMP * np.cos(angle)))
        view = np.roll(texture, (dy, dx), axis=(0, 1))[:h, :w]
        frames[k] = (255 * view[..., None] * colour).astype(np.uint8)
    return frames


def write_wav(path: Path, y: np.ndarray) -> Path:
    import soundfile

    soundfile.write(str(path), y, SR)
    return path


def write_video(path: Path, frames: np.ndarray, audio: Path | None) -> Path:
    h, w = frames.shape[1:3]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio), "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def make_clip(folder: Path, name: str, seconds: float, seed: int) -> tuple[Path, float]:
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(*TEMPO_RANGE)
    y, beats = click_track(seconds, bpm, rng.uniform(0.05, 60.0 / bpm), rng)
    wav = write_wav(folder / f"{name}.wav", y)
    video = write_video(folder / f"{name}.mp4", beat_frames(seconds, beats, rng), wav)
    wav.unlink()
    return video, bpm


def clip_seconds() -> float:
    """Source clips: the training clip (NUM_FRAMES at 30 fps, + 0.09 s as preprocess cuts) and some margin."""
    return round(NUM_FRAMES / FPS + 0.6, 2)


def make_song(path: Path, seconds: float, seed: int) -> tuple[float, np.ndarray]:
    """A click track at a random tempo written to `path`; (its tempo, the video frames its beats fall on)."""
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(*TEMPO_RANGE)
    y, beats = click_track(seconds, bpm, rng.uniform(0.05, 60.0 / bpm), rng)
    write_wav(path, y)
    return bpm, np.round(beats * FPS).astype(int)


def remux(video_from: Path, audio_from: Path, out: Path) -> Path:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(video_from), "-i", str(audio_from),
                    "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(out)], check=True)
    return out


# --------------------------------------------------------------------------------------------------------------
# avtool runs


def avtool(*args, torchrun: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    launch = [sys.executable]
    if torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
    run = subprocess.run([*launch, "-m", "avtool", *map(str, args)], capture_output=True, text=True, env=ENV, cwd=REPO)
    if check and run.returncode != 0:
        raise SystemExit(f"avtool {' '.join(map(str, args))} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


def write_config(path: Path, clips: Path, steps: int, lr: float, rank: int, save_interval: int, seed: int = 3,
                 window: int | None = None) -> Path:
    path.write_text(json.dumps({
        "train_data_dir": str(clips), "seed": seed, "audio_mode": "cross_attn",
        "audio_cross_attn_layers": list(TINY_AUDIO_LAYERS), "audio_attention_window": window,
        "model": {"type": "lora+audio", "kwargs": {"qkv_proj_lora_rank": rank, "qkv_proj_lora_alpha": rank,
                                                   "out_proj_lora_rank": rank, "out_proj_lora_alpha": rank}},
        "optimizer": {"lr": lr},
        "training": {"num_steps": steps, "warmup_steps": max(1, steps // 20), "save_interval": save_interval,
                     "num_qkv_checkpoint": 0, "num_ff_checkpoint": 0, "model_dtype": "fp32"}}))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steps_per_second(records: list[dict]) -> float:
    """Steady steps/s: from the first logged step's time to the last (the first step's warm-up excluded)."""
    if len(records) < 2:
        return float("nan")
    return (records[-1]["step"] - records[0]["step"]) / (records[-1]["time"] - records[0]["time"])


def preprocess(videos: Path, out: Path, weights: Path) -> dict:
    run = avtool("preprocess", "dance", videos, "-o", out, "--num-frames", NUM_FRAMES, "--crop", "center", "--seed", 1,
                 "--weights-dir", weights, "--caption", "a dance video", "-q", "--json")
    return json.loads(run.stdout.strip().splitlines()[-1])


def av_align(files: list[Path], audio: list[Path | None] | None = None) -> list[float | None]:
    """AV-Align of each file (against `audio[i]` where given, else its own audio track)."""
    scores = []
    for i, f in enumerate(files):
        extra = ["--audio", audio[i]] if audio and audio[i] is not None else []
        run = avtool("eval", f, "--metric", "av-align", *extra, "--json", "-q")
        row = json.loads(run.stdout.strip().splitlines()[-1])
        scores.append(find_score(row))
    return scores


def find_score(row) -> float | None:
    """The av-align value in eval's JSON row, wherever it sits."""
    if isinstance(row, dict):
        for key, value in row.items():
            if key == "av-align" and not isinstance(value, dict | list):
                return value
            found = find_score(value)
            if found is not None:
                return found
    if isinstance(row, list):
        for value in row:
            found = find_score(value)
            if found is not None:
                return found
    return None


def mean_std(values: list[float | None]) -> str:
    good = [v for v in values if v is not None]
    if not good:
        return "n/a"
    return f"{np.mean(good):.3f} ± {np.std(good) / max(1, len(good)) ** 0.5:.3f} (n={len(good)}, undefined {len(values) - len(good)})"


def paired_differences(first: list[float | None], second: list[float | None]) -> list[float | None]:
    return [None if x is None or y is None else x - y for x, y in zip(first, second, strict=True)]


def motion_shape(curves: list[np.ndarray]) -> str:
    """What the motion curves look like: jumps (steps of at least JUMP/2 px) per video, the mean step, and the share of
    the curves' peaks that open a latent frame (frames 6k+1, where the tiny VAE's latent frames meet; about 1/6 for
    motion that ignores the latent grid)."""
    peaks = [i for c in curves for i in range(1, len(c) - 1) if c[i] > max(0.1, c[i - 1]) and c[i] >= c[i + 1]]
    on_grid = np.mean([i % 6 == 1 for i in peaks]) if peaks else float("nan")
    return (f"{np.mean([np.sum(c >= JUMP / 2) for c in curves]):.1f} jumps per video, mean step "
            f"{np.mean([c.mean() for c in curves]):.2f}, {on_grid:.0%} of {len(peaks)} peaks open a latent frame")


def beat_locked_motion(curves: list[np.ndarray], beats: list[np.ndarray], offsets: range = range(-3, 4)) -> str:
    """The mean of the motion curves `offset` frames from each of their song's beats: motion that follows the music
    peaks at 0 (AV-Align counts a peak within a frame of a beat), motion that ignores it is flat."""
    means = [np.mean([c[b + o] for c, frames in zip(curves, beats, strict=True) for b in frames if 0 <= b + o < len(c)])
             for o in offsets]
    return "  ".join(f"{o:+d}: {m:.2f}" for o, m in zip(offsets, means, strict=True))


# --------------------------------------------------------------------------------------------------------------
# 1. Speed


def speed(weights: Path, work: Path, steps: int) -> None:
    print("== 1. speed: tiny MusicInfuser, CPU, fp32, batch 1 per process ==", flush=True)
    videos, clips = work / "speed_videos", work / "speed_clips"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        make_clip(videos, f"s{i}", 1.5, 1000 + i)
    preprocess(videos, clips, weights)
    for procs in (1, 2):
        run_dir = work / f"speed_run_{procs}"
        config = write_config(work / f"speed_{procs}.yaml", clips, steps, 1e-3, 4, save_interval=steps)
        start = time.perf_counter()
        avtool("train", config, "--run-dir", run_dir, "--weights-dir", weights, "-q", "--json", torchrun=procs if procs > 1 else 0)
        wall = time.perf_counter() - start
        rate = steps_per_second(metrics(run_dir))
        print(f"{procs} process{'es' if procs > 1 else ''}{' (torchrun, gloo)' if procs > 1 else ''}: "
              f"{rate:.2f} steps/s ({rate * procs:.2f} clips/s), {steps} steps, whole command {wall:.1f} s", flush=True)
    run_dir = work / "speed_run_1"
    for path in sorted(run_dir.iterdir()):
        if path.suffix in (".pt", ".safetensors"):
            print(f"  {path.name}: {path.stat().st_size / 1024:.1f} KiB")
    checkpoint_timing(weights, work / "speed_1.yaml", work / "ckpt_timing")


def checkpoint_timing(weights: Path, config_path: Path, out: Path, repeats: int = 5) -> None:
    """`save_checkpoint` timed on the task's state after one optimizer step (as the loop builds it, one rank)."""
    import torch

    from avtool.pipelines.train import read_config
    from avtool.training.checkpoint import rng_states, save_checkpoint
    from avtool.training.musicinfuser import Task

    _, config, _ = read_config(config_path)
    task = Task(config, weights, "cpu")
    params = task.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    generator = torch.Generator().manual_seed(0)
    task.loss(task.dataset()[:1], generator, 0).backward()
    optimizer.step()
    scheduler.step()
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for step in range(1, repeats + 1):
        state = {"step": step, "world_size": 1, "data": {"epoch": 0, "batch": step, "dataset_size": 4, "batch_size": 1},
                 "model": task.trainable_state(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": [{**rng_states(), "generator": generator.get_state()}]}
        start = time.perf_counter()
        path = save_checkpoint(out, step, state, keep=2)
        times.append(time.perf_counter() - start)
    count = sum(p.numel() for p in params)
    print(f"checkpoint: {count} trainable parameters (LoRA rank 4 + audio adapter), file {path.stat().st_size / 1024:.1f} KiB, "
          f"save_checkpoint (torch.save + fsync + rename + prune) median {1000 * np.median(times):.1f} ms over {repeats}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# 2. Learning


def motion(path: Path) -> np.ndarray:
    from avtool.analysis.motion import motion_curve

    return np.asarray(motion_curve(str(path), workers=1).values)


def vae_check(weights: Path, clips: Path, work: Path, count: int = 4) -> None:
    """Encode+decode preprocessed clips with the tiny VAE; does the beat motion survive?"""
    import torch
    from diffusers import AutoencoderKLMochi

    from avtool.media import read_frames
    from avtool.weights.loading import load_pretrained

    print("-- does the tiny VAE carry the motion through encode+decode? --", flush=True)
    vae = load_pretrained(AutoencoderKLMochi, weights / "mochi-1-preview" / "vae", torch_dtype=torch.float32).eval()
    out = work / f"recon_{len(list(work.glob('recon*')))}"
    out.mkdir(exist_ok=True)
    rows = []
    for video in sorted(clips.glob("*.mp4"))[:count]:
        frames = read_frames(video, num_frames=NUM_FRAMES)
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.inference_mode():
            z = vae.encode(x).latent_dist.mean
            y = vae.decode(z).sample
        recon = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        src_trim = write_video(out / f"{video.stem}.src.mp4", frames, video)
        rec = write_video(out / f"{video.stem}.recon.mp4", recon, video)
        m_src, m_rec = motion(src_trim), motion(rec)
        n = min(len(m_src), len(m_rec))
        corr = float(np.corrcoef(m_src[:n], m_rec[:n])[0, 1]) if n > 2 else float("nan")
        b_src, b_rec = frames.reshape(len(frames), -1).mean(1), recon.reshape(len(recon), -1).mean(1)
        pix = float(np.corrcoef(frames[: len(recon)].ravel().astype(float), recon[: len(frames)].ravel().astype(float))[0, 1])
        a_src, a_rec = av_align([src_trim, rec])
        rows.append((corr, pix, a_src, a_rec))
        print(f"  {video.stem}: motion-curve corr src/recon {corr:+.2f}; pixel corr {pix:+.2f}; "
              f"brightness std src {b_src.std():.1f} recon {b_rec.std():.1f}; AV-Align src {a_src} recon {a_rec}; "
              f"motion src {np.round(m_src, 2).tolist()} recon {np.round(m_rec, 2).tolist()}", flush=True)
    arr = np.array([[np.nan if v is None else v for v in r] for r in rows], float)
    print(f"  mean: motion corr {np.nanmean(arr[:, 0]):+.2f}, pixel corr {np.nanmean(arr[:, 1]):+.2f}, "
          f"AV-Align source {np.nanmean(arr[:, 2]):.3f} vs reconstruction {np.nanmean(arr[:, 3]):.3f}", flush=True)


def tiny_vae_training_frames(count: int, seed: int) -> np.ndarray:
    """(count, 19, 32, 48, 3) uint8 windows of fresh beat videos (the training clips' kind, none of the held-out songs)."""
    w, h = SOURCE_SIZE
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        bpm = rng.uniform(*TEMPO_RANGE)
        seconds = NUM_FRAMES / FPS
        _, beats = click_track(seconds, bpm, rng.uniform(0.0, 60.0 / bpm), rng)
        frames = beat_frames(seconds, beats, rng)[:NUM_FRAMES]
        y0, x0 = (h - 32) // 2, (w - 48) // 2
        out.append(frames[:, y0 : y0 + 32, x0 : x0 + 48])
    return np.stack(out)


def with_component(weights: Path, folder: Path, component: str, model) -> Path:
    """A weights folder: `weights` symlinked, except `component` (a folder inside it, e.g. "mochi-1-preview/vae"),
    which is `model` saved there, beside the original folder's other configs (e.g. wav2vec2's preprocessor config)."""
    parts = Path(component).parts
    for depth, name in enumerate(parts):
        source, target = weights.joinpath(*parts[:depth]), folder.joinpath(*parts[:depth])
        target.mkdir(parents=True, exist_ok=True)
        for sub in source.iterdir():
            if sub.name != name and not (target / sub.name).exists():
                (target / sub.name).symlink_to(sub.resolve())
    saved_folder, original_folder = folder / component, weights / component
    model.save_pretrained(saved_folder, safe_serialization=True)
    # keep the original config's keys that the library drops on saving: avtool's tiny size (`sample_height`, ...)
    saved, original = (json.loads((path / "config.json").read_text()) for path in (saved_folder, original_folder))
    (saved_folder / "config.json").write_text(json.dumps({**original, **saved}, indent=2))
    for sub in original_folder.glob("*.json"):
        if not sub.name.endswith(".index.json") and not (saved_folder / sub.name).exists():
            (saved_folder / sub.name).symlink_to(sub.resolve())
    return folder


def pretrain_tiny_dit(weights: Path, clips: Path, out: Path, steps: int, size: tuple[int, int, int] | None = None,
                      lr: float = 1e-3) -> tuple[Path, str]:
    """Pretrain the Mochi DiT as a plain video model (flow matching as `avtool train` computes it, the clips' caption,
    no audio) on beat clips for `steps` steps, as the real Mochi comes pretrained on video; write a weights folder with
    it in place of the random one. `size` (layers, heads, head width): start from a new random DiT of that size,
    initialised as `--tiny` initialises its own, instead of the tiny one. Returns (folder, summary)."""
    import torch
    from diffusers import MochiTransformer3DModel

    from avtool.models.mochi import MochiFlowModel
    from avtool.pipelines.train import read_config
    from avtool.training.musicinfuser import training_example, vae_latent_stats
    from avtool.training.musicinfuser_config import training_clips
    from avtool.weights.loading import load_pretrained
    from avtool.weights.tiny.mochi import POS_FREQUENCY_STD, TRANSFORMER_CONFIG

    _, config, _ = read_config(write_config(out / "dit.yaml", clips, 1, lr, 1, 1))
    data, (mean, std) = training_clips(config), vae_latent_stats(weights)
    torch.manual_seed(0)
    if size is None:
        transformer = load_pretrained(MochiTransformer3DModel, weights / "mochi-1-preview" / "transformer",
                                      torch_dtype=torch.float32)
    else:
        layers, heads, head_dim = size
        transformer = MochiTransformer3DModel(**{**TRANSFORMER_CONFIG, "num_layers": layers, "num_attention_heads": heads,
                                                 "attention_head_dim": head_dim})
        with torch.no_grad():
            transformer.pos_frequencies.normal_(0.0, POS_FREQUENCY_STD)
    flow, generator = MochiFlowModel(transformer.train()), torch.Generator().manual_seed(0)

    def batch_loss(step: int):
        batch = [data[int(i)] for i in torch.randint(len(data), (2,), generator=generator)]
        example = training_example(batch, generator, step, config, mean, std)
        return (flow(example.noisy, example.sigma, example.text, example.text_mask) - example.target).pow(2).mean()

    summary = train_for(steps, transformer.parameters(), batch_loss, lr)
    dims = transformer.config
    summary = (f"{dims.num_layers} blocks x {dims.num_attention_heads * dims.attention_head_dim} wide, "
               f"{sum(p.numel() for p in transformer.parameters())} parameters: {summary} (flow loss, batch 2)")
    return with_component(weights, out / "weights_pretrained_dit", "mochi-1-preview/transformer", transformer.eval()), summary


def train_for(steps: int, parameters, batch_loss, lr: float = 1e-3) -> str:
    """AdamW on `parameters` for `steps` steps, `batch_loss(step)` per step; a summary: steps, time, loss by fifths."""
    import torch

    optimizer = torch.optim.AdamW(parameters, lr=lr)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        loss = batch_loss(len(losses))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    k = max(1, -(-len(losses) // 5))
    return (f"{len(losses)} steps in {time.perf_counter() - start:.0f} s, loss by fifths "
            + " ".join(f"{np.mean(losses[i:i + k]):.4f}" for i in range(0, len(losses), k)))


def train_tiny_vae(weights: Path, out: Path, steps: int, decoder_steps: int = 0, kl_weight: float = 1e-4) -> tuple[Path, str]:
    """Train the tiny Mochi VAE (encoder + decoder) as an autoencoder on beat windows for `steps` steps, then the
    decoder alone for `decoder_steps` at a lower learning rate; write a weights folder with it in place of the random
    one (everything else symlinked). Returns (folder, summary)."""
    import torch
    from diffusers import AutoencoderKLMochi

    from avtool.weights.loading import load_pretrained

    torch.manual_seed(0)
    vae = load_pretrained(AutoencoderKLMochi, weights / "mochi-1-preview" / "vae", torch_dtype=torch.float32).train()
    data = torch.from_numpy(tiny_vae_training_frames(64, 7)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1

    def frame_change(x):
        return x[:, :, 1:] - x[:, :, :-1]

    def batch_loss(step: int, change_weight: float = 0.0, latent_noise=None):
        batch = data[torch.randint(len(data), (2,))]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.sample()
        if latent_noise is not None:  # per channel, times a uniform draw per clip
            latents = latents + latent_noise * torch.rand(len(latents), 1, 1, 1, 1) * torch.randn_like(latents)
        recon = vae.decode(latents).sample
        return ((recon - batch).pow(2).mean() + kl_weight * posterior.kl().mean() / batch[0].numel()
                + change_weight * (frame_change(recon) - frame_change(batch)).pow(2).mean())

    summary = f"{train_for(steps, vae.parameters(), batch_loss)} (reconstruction, batch 2)"
    if decoder_steps:
        # The latents stay as they are. The decoder learns the frame-to-frame change as well, and to decode latents
        # off by up to 0.3 of their spread (as sampled ones may be) to the clean frames: it then leaves less sub-pixel
        # flicker between the jumps, whose peaks AV-Align counts.
        vae.encoder.requires_grad_(False)
        with torch.no_grad():
            means = torch.cat([vae.encode(data[i : i + 8]).latent_dist.mean for i in range(0, len(data), 8)])
        noise = 0.3 * means.std(dim=(0, 2, 3, 4), keepdim=True)
        summary += (f"; then the decoder alone, + frame-change loss, noisy latents: "
                    f"{train_for(decoder_steps, vae.decoder.parameters(), lambda step: batch_loss(step, 1.0, noise), lr=3e-4)}")
    return with_component(weights, out / "weights_trained_vae", "mochi-1-preview/vae", vae.eval()), summary


def dance(weights: Path, songs: list[Path], seeds: list[int], out: Path, steps: int) -> list[Path]:
    """One `avtool dance` per (song, seed) pair, all from excerpt start 0; the output paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for song, seed in zip(songs, seeds, strict=True):
        target = out / f"{song.stem}_s{seed}.mp4"
        avtool("dance", song, "--weights-dir", weights, "--num-frames", NUM_FRAMES, "--steps", steps, "--seed", seed,
               "--start", 0, "-o", target, "-q")
        paths.append(target)
    return paths


def with_adapter(weights: Path, adapter: Path, folder: Path) -> Path:
    """A weights folder: the tiny ones symlinked, `adapter` as the MusicInfuser file."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in weights.iterdir():
        if sub.name != "musicinfuser" and not (folder / sub.name).exists():
            (folder / sub.name).symlink_to(sub.resolve())
    (folder / "musicinfuser").mkdir(exist_ok=True)
    link = folder / "musicinfuser" / "musicinfuser.safetensors"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(adapter.resolve())
    return folder


def fresh_adapter(weights: Path, config_path: Path, out: Path) -> Path:
    """The adapter `Task` starts from (LoRA B and cross-attention outputs zero), as a step-0 adapter file."""
    from avtool.pipelines.train import read_config
    from avtool.training.musicinfuser import Task

    _, config, _ = read_config(config_path)
    out.mkdir(parents=True, exist_ok=True)
    return Task(config, weights, "cpu").save_result(out, 0)


def trained_task(weights: Path, config_path: Path, checkpoint: Path):
    """The training task of `config_path` (its clips; the detailed caption always, never dropped) with the
    checkpoint's adapter loaded."""
    import dataclasses as dc

    from avtool.pipelines.train import read_config
    from avtool.training.checkpoint import load_checkpoint
    from avtool.training.musicinfuser import Task

    _, config, _ = read_config(config_path)
    config = dc.replace(config, basic_prompt_ratio=0.0, training=dc.replace(config.training, caption_dropout=0.0))
    task = Task(config, weights, "cpu")
    task.load_trainable_state(load_checkpoint(checkpoint)["model"])
    return task


def audio_dependence(weights: Path, config_path: Path, checkpoint: Path, draws: int = 8) -> str:
    """Flow-matching loss of the trained model on its training clips with each clip's own audio vs another clip's
    audio, same latents, noise and sigma: does the adapter use the music at all?"""
    import dataclasses as dc

    import torch

    from avtool.training.musicinfuser import training_example

    task = trained_task(weights, config_path, checkpoint)
    config, clips = task.config, task.dataset()
    own, other = [], []
    with torch.no_grad():
        for i, clip in enumerate(clips):
            for d in range(draws):
                example = training_example([clip], torch.Generator().manual_seed(1000 * i + d), 10**6, config,
                                           task.latents_mean, task.latents_std)
                swapped = training_example([clips[(i + 1) % len(clips)]], torch.Generator().manual_seed(0), 10**6, config,
                                           task.latents_mean, task.latents_std)
                own.append(task.example_loss(example).item())
                other.append(task.example_loss(dc.replace(example, audio=swapped.audio)).item())
    own_a, other_a = np.array(own), np.array(other)
    return (f"loss with own audio {own_a.mean():.4f}, with another clip's audio {other_a.mean():.4f} "
            f"(difference {np.mean(other_a - own_a):+.4f} ± {np.std(other_a - own_a) / len(own_a) ** 0.5:.4f}, "
            f"{len(own_a)} draws)")


def time_routing(weights: Path, config_path: Path, checkpoint: Path, draws: int = 2, ridge: float = 1.0) -> str:
    """Can the audio cross-attention line the music up with the frames? Two read-outs on the clips of `config_path`:
    how well a ridge probe (fitted on 2/3 of the clips) tells a video token's latent frame from the hidden state
    entering the cross-attention, and how much attention the trained cross-attention puts on the audio frame of the
    token's own latent frame; each against chance (1 / latent frames)."""
    import torch

    from avtool.models.musicinfuser import audio_window_mask
    from avtool.training.musicinfuser import training_example

    task = trained_task(weights, config_path, checkpoint)
    config, layer = task.config, task.transformer.audio_cross_attn_blocks[0]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    layer.register_forward_hook(lambda _, args, __: seen.append((args[0][0], args[1][0])))
    clips, states, frames, own_frame_attention = task.dataset(), [], [], []
    with torch.no_grad():
        for i, clip in enumerate(clips):
            for d in range(draws):
                example = training_example([clip], torch.Generator().manual_seed(100 * i + d), 10**6, config,
                                           task.latents_mean, task.latents_std)
                seen.clear()
                task.example_loss(example)
                tokens, audio = seen[0]
                count = example.noisy.shape[2]
                frame = torch.arange(count).repeat_interleave(len(tokens) // count)
                q = layer.to_q(tokens).unflatten(-1, (layer.num_heads, -1)).transpose(0, 1)
                k = layer.to_k(audio).unflatten(-1, (layer.num_heads, -1)).transpose(0, 1)
                logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
                if config.audio_attention_window is not None:
                    mask = audio_window_mask(count, len(tokens) // count, config.audio_attention_window, logits.device)
                    logits = logits.masked_fill(~mask, float("-inf"))
                attention = torch.softmax(logits, -1).mean(0)  # (tokens, audio frames)
                own_frame_attention.append(attention[torch.arange(len(tokens)), frame].mean().item())
                states.append(np.c_[tokens.numpy(), np.ones(len(tokens))])
                frames.append(frame.numpy())
    fit = len(states) * 2 // 3
    a, b = np.concatenate(states[:fit]), np.eye(count)[np.concatenate(frames[:fit])]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
    accuracy = np.mean(np.argmax(np.concatenate(states[fit:]) @ w, 1) == np.concatenate(frames[fit:]))
    return (f"latent frame read out of the hidden state: accuracy {accuracy:.3f}; attention on the token's own audio "
            f"frame {np.mean(own_frame_attention):.3f} (chance for both: {1 / count:.3f}; first cross-attention, "
            f"{len(clips)} clips x {draws} draws)")


def click_waves(count: int, seed: int, seconds: float = 2.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` fresh click tracks at 16 kHz, each with its log-energy envelope at wav2vec2's 50 Hz (320 samples)."""
    import soxr

    waves = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        bpm = rng.uniform(*TEMPO_RANGE)
        y = soxr.resample(click_track(seconds, bpm, rng.uniform(0.05, 60 / bpm), rng)[0], SR, 16000).astype(np.float32)
        frames = len(y) // 320
        waves.append((y, np.log(np.sqrt(np.mean(y[: frames * 320].reshape(frames, 320) ** 2, axis=1)) + 1e-4)))
    return waves


def shifted(envelope: np.ndarray, offset: int, length: int) -> np.ndarray:
    """envelope[j + offset] for j < length, the edge value beyond either end."""
    return envelope[np.clip(np.arange(length) + offset, 0, len(envelope) - 1)]


def audio_feature_probe(weights: Path, songs: int = 24, ridge: float = 1.0, offsets: tuple[int, ...] = (-6, -3, 0, 3, 6)) -> str:
    """Do the (tiny) wav2vec2 features carry the beat, and the sound around them? A ridge read-out of the log-energy
    envelope `offset` feature frames (20 ms each) away from each frame, fitted on 2/3 of fresh click tracks; its
    correlation on the other third, and at offset 0 on the features of another song. Upstream hands each latent frame
    one feature frame, so a beat 3-6 frames away from it reaches the adapter only through this context."""
    from avtool.models.musicinfuser import Wav2VecEncoder

    encoder = Wav2VecEncoder.from_folder(weights / "wav2vec2-base-960h")
    waves = click_waves(songs, 1000)
    features = [encoder(y)[0].numpy() for y, _ in waves]
    features = [np.c_[f, np.ones(len(f))] for f in features]
    fit = songs * 2 // 3
    scores = {}
    for offset in offsets:
        targets = [shifted(envelope, offset, len(f)) for (_, envelope), f in zip(waves, features, strict=True)]
        a, b = np.concatenate(features[:fit]), np.concatenate(targets[:fit])
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
        held = np.concatenate([f @ w for f in features[fit:]])
        scores[offset] = np.corrcoef(held, np.concatenate(targets[fit:]))[0, 1]
        if offset == 0:
            other = np.corrcoef(held, np.concatenate(targets[fit + 1:] + targets[fit:fit + 1]))[0, 1]
    return (f"held-out correlation by offset: {', '.join(f'{o:+d}: {v:.2f}' for o, v in scores.items())} "
            f"(offset 0 on another song's features: {other:.2f})")


def train_tiny_wav2vec2(weights: Path, out: Path, steps: int, context: int = 6) -> tuple[Path, str]:
    """Train the tiny wav2vec2 so that each feature frame carries the sound of the `context` frames on either side, as
    the real one's transformer does (the random tiny one carries its own frame's energy only): a linear head reads the
    log-energy envelope at offsets -context..context out of each frame, on fresh click tracks. Write a weights folder
    with it in place of the random one. Returns (folder, summary)."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = weights / "wav2vec2-base-960h"
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC.from_pretrained(folder, dtype=torch.float32)
    normalise = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    head = torch.nn.Linear(model.config.hidden_size, 2 * context + 1)
    waves = click_waves(256, 11)
    inputs = torch.from_numpy(normalise([y for y, _ in waves], sampling_rate=16000, return_tensors="np").input_values)
    frames = model.wav2vec2(inputs[:1]).last_hidden_state.shape[1]
    targets = torch.from_numpy(np.stack([np.stack([shifted(e, o, frames) for o in range(-context, context + 1)], axis=1)
                                         for _, e in waves])).float()
    targets = (targets - targets.mean()) / targets.std()
    model.train()

    def batch_loss(step: int):
        pick = torch.randint(len(waves), (8,))
        return (head(model.wav2vec2(inputs[pick]).last_hidden_state) - targets[pick]).pow(2).mean()

    summary = train_for(steps, [*model.wav2vec2.parameters(), *head.parameters()], batch_loss)
    return (with_component(weights, out / "weights_trained_wav2vec2", "wav2vec2-base-960h", model.eval()),
            f"{summary} (envelope read-out, batch 8)")


def learning(weights: Path, work: Path, clips_count: int, steps: int, seeds: int, sample_steps: int, lr: float, rank: int,
             vae_steps: int, decoder_steps: int, dit_steps: int, dit_size: tuple[int, int, int] | None, wav2vec_steps: int,
             window: int | None) -> None:
    print(f"\n== 2. learning: {clips_count} beat clips, {steps} steps, {seeds} held-out songs ==", flush=True)
    print(f"does the tiny wav2vec2 carry the beat (log-energy read out of its features)? {audio_feature_probe(weights)}",
          flush=True)
    if wav2vec_steps > 0:
        weights, summary = train_tiny_wav2vec2(weights, work, wav2vec_steps)
        print(f"tiny wav2vec2 trained to carry its context: {summary}; read-out now {audio_feature_probe(weights)}; "
              "the rest uses it", flush=True)
    videos, clips = work / "videos", work / "clips"
    videos.mkdir(parents=True, exist_ok=True)
    tempi = [make_clip(videos, f"beat{i:02d}", clip_seconds(), i)[1] for i in range(clips_count)]
    if vae_steps > 0:
        random_clips = work / "clips_random_vae"
        preprocess(videos, random_clips, weights)
        print("random tiny VAE:")
        vae_check(weights, random_clips, work)
        weights, summary = train_tiny_vae(weights, work, vae_steps, decoder_steps)
        print(f"tiny VAE trained as an autoencoder on 64 fresh beat windows: {summary}; the rest uses it", flush=True)
    if dit_steps > 0:
        prior_videos, prior_clips = work / "prior_videos", work / "prior_clips"
        prior_videos.mkdir(exist_ok=True)
        for i in range(max(64, clips_count)):  # other beat clips than the adapter's
            make_clip(prior_videos, f"prior{i:03d}", clip_seconds(), 3000 + i)
        preprocess(prior_videos, prior_clips, weights)
        weights, summary = pretrain_tiny_dit(weights, prior_clips, work, dit_steps, dit_size)
        print(f"DiT pretrained as a video model on {max(64, clips_count)} other beat clips: {summary}; the rest uses it",
              flush=True)
    start = time.perf_counter()
    summary = preprocess(videos, clips, weights)
    print(f"clips: {clips_count} sources, tempi {min(tempi):.0f}-{max(tempi):.0f} BPM; preprocess wrote "
          f"{summary['written']}, rejected {summary['rejected']} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"AV-Align of the training clips themselves (ceiling): {mean_std(av_align(sorted(clips.glob('*.seg0.mp4'))[:4]))}", flush=True)
    print("trained tiny VAE:" if vae_steps > 0 else "random tiny VAE:")
    vae_check(weights, clips, work)

    run_dir = work / "run"
    config = write_config(work / "learn.yaml", clips, steps, lr, rank, save_interval=steps, window=window)
    start = time.perf_counter()
    avtool("train", config, "--run-dir", run_dir, "--weights-dir", weights, "-q", "--json")
    train_s = time.perf_counter() - start
    records = metrics(run_dir)
    losses = np.array([r["loss"] for r in records])
    k = max(1, len(losses) // 10)
    print(f"training: {len(records)} steps in {train_s:.0f} s ({steps_per_second(records):.2f} steps/s); loss mean of "
          f"each tenth: {' '.join(f'{losses[i:i + k].mean():.3f}' for i in range(0, len(losses), k))}", flush=True)
    avtool("train", "--plot", run_dir, "-q")
    print(f"loss curve: {run_dir / 'loss.png'}", flush=True)
    checkpoint = run_dir / f"checkpoint-{steps}.pt"
    print(f"audio dependence of the trained model, on its training clips: {audio_dependence(weights, config, checkpoint)}",
          flush=True)
    # the same on clips it never saw: a model that learnt rhythm gains there too; one that learnt which sound goes with
    # which training clip (its texture and colour) does not
    held_videos, held_clips = work / "held_videos", work / "held_clips"
    held_videos.mkdir(exist_ok=True)
    for i in range(8):
        make_clip(held_videos, f"held{i:02d}", clip_seconds(), 200 + i)
    preprocess(held_videos, held_clips, weights)
    held_config = write_config(work / "held.yaml", held_clips, steps, lr, rank, save_interval=steps, window=window)
    print(f"audio dependence on 8 held-out clips: {audio_dependence(weights, held_config, checkpoint)}", flush=True)
    print(f"time routing, held-out clips: {time_routing(weights, held_config, checkpoint)}", flush=True)

    songs_dir = work / "songs"
    songs_dir.mkdir(exist_ok=True)
    songs = [songs_dir / f"song{i:02d}.wav" for i in range(seeds)]
    song_tempi, song_beats = zip(*(make_song(song, 3.0, 5000 + i) for i, song in enumerate(songs)), strict=True)
    print(f"held-out songs: tempi {', '.join(f'{t:.0f}' for t in song_tempi)} BPM", flush=True)
    seed_list = list(range(100, 100 + seeds))
    other = songs[1:] + songs[:1]  # control a: conditioned on the next song

    trained_w = with_adapter(weights, run_dir / f"model_{steps}.adapter.safetensors", work / "w_trained")
    fresh_w = with_adapter(weights, fresh_adapter(weights, config, work / "fresh"), work / "w_fresh")
    start = time.perf_counter()
    trained = dance(trained_w, songs, seed_list, work / "gen_trained", sample_steps)
    swapped = dance(trained_w, other, seed_list, work / "gen_swapped", sample_steps)
    untrained = dance(fresh_w, songs, seed_list, work / "gen_fresh", sample_steps)
    print(f"generation: {3 * seeds} videos in {time.perf_counter() - start:.0f} s", flush=True)
    # control a: the picture generated from song B with song A (the trained run's muxed excerpt) as its sound
    control_a = [remux(s, t, work / "gen_swapped" / f"{s.stem}.scoredA.mp4") for s, t in zip(swapped, trained, strict=True)]

    s_trained, s_a, s_b = av_align(trained), av_align(control_a), av_align(untrained)
    print("AV-Align per seed (trained / control a: song swapped / control b: fresh adapter):")
    for i in range(seeds):
        print(f"  {songs[i].stem} seed {seed_list[i]}: {s_trained[i]} / {s_a[i]} / {s_b[i]}")
    print(f"AV-Align mean ± s.e.: trained {mean_std(s_trained)}")
    print(f"                      control a (conditioned on another song, scored on this one) {mean_std(s_a)}")
    print(f"                      control b (untrained adapter) {mean_std(s_b)}", flush=True)
    for name, control in (("control a", s_a), ("control b", s_b)):
        print(f"paired, same song and seed: trained - {name} {mean_std(paired_differences(s_trained, control))}")
    print("does the generator draw the data's motion? (motion curves, px/frame)")
    for name, videos in (("training clips", sorted(clips.glob("*.seg0.mp4"))[:seeds]), ("trained", trained),
                         ("control b", untrained)):
        print(f"  {name}: {motion_shape([motion(p) for p in videos])}", flush=True)
    print("does the motion fall on the beats? mean motion (px/frame) at each offset (frames) from the beats of the song "
          "scored against:")
    for name, videos in (("trained", trained), ("control a", control_a), ("control b", untrained)):
        print(f"  {name}: {beat_locked_motion([motion(p) for p in videos], song_beats)}", flush=True)


def main() -> None:
    global TEMPO_RANGE, NUM_FRAMES, LOOK_SEED  # --tempo, --num-frames and --look set the data's constants
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=8, help="`avtool dance --steps`")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (the tiny DiT's width is 32)")
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--train-vae", type=int, default=900, metavar="STEPS",
                        help="train the tiny VAE this many steps first (0: keep the random one)")
    parser.add_argument("--refine-decoder", type=int, default=0, metavar="STEPS",
                        help="then train the tiny VAE's decoder alone this many steps (less flicker in what it decodes)")
    parser.add_argument("--pretrain-dit", type=int, default=0, metavar="STEPS",
                        help="pretrain the DiT as a video model on other beat clips this many steps first (0: the random one)")
    parser.add_argument("--dit-size", type=int, nargs=3, default=None, metavar=("LAYERS", "HEADS", "HEAD_DIM"),
                        help="with --pretrain-dit: pretrain a new DiT of this size instead of --tiny's (4 2 16)")
    parser.add_argument("--train-wav2vec", type=int, default=0, metavar="STEPS",
                        help="train the tiny wav2vec2 to carry the sound around each frame this many steps first")
    parser.add_argument("--tempo", type=float, nargs=2, default=TEMPO_RANGE, metavar=("LOW", "HIGH"), help="BPM range of the beats")
    parser.add_argument("--num-frames", type=int, default=NUM_FRAMES, help="frames per clip and generated video (6k+1)")
    parser.add_argument("--look", choices=("random", "fixed"), default="random",
                        help="each clip its own texture and colour, or one for all (the jumps' directions stay random)")
    parser.add_argument("--attention-window", type=int, default=None, metavar="FRAMES",
                        help="train with avtool's audio_attention_window (default: upstream's attention to the whole clip)")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="keep the run's files here (default: a temporary folder)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-learning", action="store_true")
    args = parser.parse_args()
    if args.dit_size and not args.pretrain_dit:
        parser.error("--dit-size needs --pretrain-dit STEPS: a new DiT starts random")
    if args.refine_decoder and not args.train_vae:
        parser.error("--refine-decoder needs --train-vae STEPS: it refines the decoder of the VAE trained there")
    TEMPO_RANGE, NUM_FRAMES = tuple(args.tempo), args.num_frames
    LOOK_SEED = 12345 if args.look == "fixed" else None
    with weights_folder(args.weights_dir, ["mochi-1-preview", "musicinfuser"]) as weights, \
            tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights = Path(weights).resolve()
        if not args.skip_speed:
            speed(weights, work, args.speed_steps)
        if not args.skip_learning:
            learning(weights, work, args.clips, args.steps, args.seeds, args.sample_steps, args.lr, args.rank,
                     args.train_vae, args.refine_decoder, args.pretrain_dit, args.dit_size, args.train_wav2vec, args.attention_window)


if __name__ == "__main__":
    main()
