"""Dance2Music-Diffusion motion-to-music (`avtool score --model d2m`): a dance's SMPL motion in, music for it out.

    validate the motion files, options, the --video and weight files      (nothing imported or loaded yet)
    plan one job per (motion, seed)
    load MOT, the latent U-Net (a D2M folder: `avtool train configs/d2m.yaml` makes one) and dmae1d-ATC32-v3 once
    per job: windows of 512 latent frames (2^18 samples, 5.94 s, for 356 motion frames) over the music's length
             per window: MOT tokens of its motion frames -> v-sampling of the latents with classifier-free
                         guidance against the learned null tokens, its first latents held to the previous
                         window's last ones (inpainting by replacement at every step)
             per window: the autoencoder's diffusion decode; neighbours cross-faded over their shared latents
             -> 44.1 kHz stereo WAV; with --video, the video with the music muxed in

Upstream generates one window only (5.94 s from the first 356 frames); longer motion is generated in windows here.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput, WeightsError
from avtool.media import mux, probe
from avtool.media.motion import MOTION_FPS, MOTION_SUFFIXES, check_motion_file, read_motion
from avtool.models.d2m import SAMPLE_RATE, SAMPLES_PER_LATENT, WINDOW_LATENTS
from avtool.pipelines.common import (
    GenerationOptions,
    Job,
    Rendered,
    RunInfo,
    autocast_for,
    check_output,
    check_range,
    collect_files,
    options_record,
    plan_jobs,
    run_jobs,
    weights_record,
    write_record,
)
from avtool.pipelines.score import write_wav
from avtool.runtime import Shard, Stopwatch, resolve_device, resolve_shard, silence_libraries
from avtool.ui import progress, say
from avtool.weights.layout import D2M_CONFIG_FILE, D2M_DIFFUSION_FILE, D2M_FOLDER, D2M_MOT_FILE, DMAE_FOLDER, WeightsCheck

DEFAULT_STEPS = 50  # upstream's `Dmodel.sample(..., num_steps=50)`
DEFAULT_DECODE_STEPS = 50  # upstream's `diffAE_model.decode(latent, num_steps=50)`
DEFAULT_CFG = 9.0  # upstream's `embedding_scale=9` (its file names say "scale4")
OVERLAP_LATENTS = 128  # 1.49 s of each later window held to the previous window's latents
MAX_CFG = 100.0
DEFAULT_MOTION_FRAMES = 356  # upstream's window, for folders without d2m.json
TRAIN_HINT = ("a D2M is trained here: avtool preprocess d2m AISTPP_DIR -o data/d2m && avtool train configs/d2m.yaml, "
              "then --checkpoint RUN_DIR (or `avtool download-weights --tiny d2m` for a demo)")


@dataclass(frozen=True)
class D2MRequest:
    """The options of `score --model d2m` (the shared ones are in GenerationOptions)."""

    checkpoint: Path | None = None  # a D2M folder; None: <weights-dir>/d2m
    video: Path | None = None  # the dance's video: the music is also muxed into a copy of it
    duration: float | None = None  # seconds of music; None: the motion's length
    cfg_scale: float = DEFAULT_CFG
    decode_steps: int = DEFAULT_DECODE_STEPS


@dataclass(frozen=True)
class Window:
    """One generation window: its first latent frame, its first motion frame, and how many of its first latents
    are held to the previous window's."""

    start: int
    motion_start: int
    held: int


@dataclass(frozen=True)
class D2MWeights:
    checkpoint: Path
    autoencoder: Path
    motion_frames: int  # MOT's window (its position table minus the class token)
    files: dict[str, list[Path]]


@dataclass
class D2MModels:
    mot: Any  # avtool.models.d2m.mot.MOT
    denoiser: Any  # avtool.models.d2m.diffusion.D2MDenoiser
    autoencoder: Any  # avtool.models.d2m.autoencoder.DMAE
    device: str
    autocast: Any  # a context-manager factory: the precision sampling runs in


def score_d2m(inputs: list[Path], request: D2MRequest, opts: GenerationOptions) -> Iterator[dict[str, Any]]:
    """Music for every motion file (or folder of them) once per seed; models load once. Yields each job's result."""
    # 1. Validate everything that needs no model.
    check_options(request, opts)
    files = collect_files(inputs, MOTION_SUFFIXES, "motion")
    for path in files:
        check_motion_file(path)
    weights = check_weights(opts.weights_dir, request.checkpoint)
    motions = {path: read_motion(path, min_frames=weights.motion_frames) for path in files}
    video = check_video(request, motions)
    for path, motion in motions.items():
        if request.duration is not None and request.duration > len(motion) / MOTION_FPS + 1e-9:
            raise BadInput(f"--duration {request.duration:g}: {path} holds only {len(motion) / MOTION_FPS:.2f} s of motion")
    shard = resolve_shard(opts.shard)

    # 2. Plan the jobs; each writes `<stem>_scored.wav` (and `<stem>_scored.mp4` with --video).
    jobs = plan_jobs([{"motion": path} for path in motions], opts, suffix="_scored", ext=".wav", shard=shard)
    if video is not None:
        for job in jobs:
            check_output(Job(job.inputs, job.seed, job.output.with_suffix(".mp4")), replace=opts.overwrite or opts.skip_existing)

    # 3. Load once, then render each job.
    load = functools.partial(load_models, weights, request, opts, shard)
    render = functools.partial(render_job, motions=motions, request=request, video=video, steps=opts.steps or DEFAULT_STEPS,
                               quiet=opts.quiet)
    yield from run_jobs(jobs, opts, load, render)


def load_models(weights: D2MWeights, request: D2MRequest, opts: GenerationOptions, shard: Shard | None) -> tuple[D2MModels, RunInfo]:
    """MOT and the denoiser (fp32 weights) and the autoencoder; upstream samples under fp16 autocast on CUDA."""
    import torch

    from avtool.models.d2m.autoencoder import load_dmae
    from avtool.models.d2m.checkpoint import load_d2m
    from avtool.weights.loading import weights_hint

    device = resolve_device(opts.device, shard)
    silence_libraries()
    clock = Stopwatch()
    try:
        mot, denoiser = load_d2m(weights.checkpoint, device)
    except WeightsError as error:
        error.hint = error.hint or TRAIN_HINT
        raise
    with weights_hint(weights.autoencoder.parent, {DMAE_FOLDER: "d2m"}):
        autoencoder = load_dmae(weights.autoencoder, device, torch.float32)
    autocast, precision = autocast_for(("fp16" if device.startswith("cuda") else "fp32") if opts.dtype == "auto" else opts.dtype,
                                       device)
    info = RunInfo("score", device, precision, opts.steps or DEFAULT_STEPS,
                   weights_record(weights.files), {**options_record(request), "model": "d2m"}, shard, clock.lap())
    return D2MModels(mot, denoiser, autoencoder, device, autocast), info


def render_job(models: D2MModels, job: Job, motions: dict[Path, np.ndarray], request: D2MRequest,
               video: Path | None, steps: int, quiet: bool) -> Rendered:
    """One dance's music: latents window by window, decoded, cross-faded, written as WAV (and muxed)."""
    import torch

    from avtool.sampling import VInpaintDenoiser, sample_vdiffusion, vdiffusion_sigmas
    from avtool.weights.manifest import digests

    path, motion = job.inputs["motion"], motions[job.inputs["motion"]]
    clock, timings = Stopwatch(), {}
    seconds = request.duration if request.duration is not None else len(motion) / MOTION_FPS
    num_samples = round(seconds * SAMPLE_RATE)
    motion_frames = models.mot.config.num_frames
    windows = plan_windows(math.ceil(num_samples / SAMPLES_PER_LATENT), len(motion), motion_frames)
    say(f"{path.name} -> {job.output.name}: seed {job.seed}, {seconds:.2f} s of music in {len(windows)} window(s)", quiet)

    generator = torch.Generator("cpu").manual_seed(job.seed)
    sigmas = vdiffusion_sigmas(steps).to(models.device)
    motion = torch.from_numpy(motion).to(models.device)
    latents: list[torch.Tensor] = []
    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task("sampling", total=steps * len(windows))
        for window in windows:
            with models.autocast():
                tokens, _ = models.mot(motion[None, window.motion_start : window.motion_start + motion_frames])
            noise = torch.randn(1, models.denoiser.config.unet.in_channels, WINDOW_LATENTS, generator=generator).to(models.device)
            guided = functools.partial(guided_v, models, tokens=tokens, scale=request.cfg_scale)
            if window.held:
                known, mask = torch.zeros_like(noise), torch.zeros_like(noise, dtype=torch.bool)
                known[..., : window.held] = latents[-1][..., WINDOW_LATENTS - window.held :]
                mask[..., : window.held] = True
                guided = VInpaintDenoiser(guided, known, mask, noise)
            latents.append(sample_vdiffusion(guided, noise, sigmas, callback=None if bar.disable else lambda s: bar.advance(task)))
    timings["sampling"] = clock.lap()

    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task("decoding", total=request.decode_steps * len(windows))
        pieces = [models.autoencoder.decode(latent, request.decode_steps, generator,
                                            callback=None if bar.disable else lambda s: bar.advance(task))[0].float().cpu().numpy()
                  for latent in latents]
    music = join_windows(pieces, windows)[:, :num_samples]
    timings["decode"] = clock.lap()

    wav = write_wav(job.output, music.T, SAMPLE_RATE)
    timings["write"] = clock.lap()
    details = {"input": str(path), "music_seconds": round(num_samples / SAMPLE_RATE, 3), "windows": len(windows),
               "sample_rate": SAMPLE_RATE, "cfg_scale": request.cfg_scale, "decode_steps": request.decode_steps}
    if video is not None:
        with_music = mux(video, wav, job.output.with_suffix(".mp4"), pad_audio=True)
        record = digests(with_music)
        write_record(with_music, {"subcommand": "score", "inputs": {"motion": str(path), "video": str(video)}, "seed": job.seed,
                                  "music": str(wav), "output": {"path": str(with_music), "size": record.size, "sha256": record.sha256}})
        details["video_with_music"] = str(with_music)
        timings["mux"] = clock.lap()
    return Rendered(details, timings)


def guided_v(models: D2MModels, x, sigma, *, tokens, scale: float):
    """The denoiser's guided v for a batch of one (upstream: `Dmodel.sample(noise, text=motion, embedding_scale)`)."""
    with models.autocast():
        return models.denoiser(x, sigma, tokens, embedding_scale=scale).float()


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def check_options(request: D2MRequest, opts: GenerationOptions) -> None:
    opts.check()
    if opts.generator != "cpu":
        raise BadInput(f"--generator {opts.generator}: d2m draws its noise on the CPU only",
                       hint="there are no upstream D2M samples to reproduce from a seed; leave --generator out")
    check_range("--cfg-scale", request.cfg_scale, 0, MAX_CFG, "1 is no guidance")
    check_range("--decode-steps", request.decode_steps, 1, 1000)
    if request.duration is not None:
        check_range("--duration", request.duration, 1, 24 * 3600.0, "seconds")


def check_weights(weights_dir: Path, checkpoint: Path | None) -> D2MWeights:
    """The D2M folder (upstream's two state dicts, avtool's d2m.json if any) and dmae1d-ATC32-v3's files."""
    check = WeightsCheck(weights_dir)
    folder = checkpoint if checkpoint is not None else check.root / D2M_FOLDER
    trained = [folder / name for name in (D2M_DIFFUSION_FILE, D2M_MOT_FILE)]
    missing = [path.name for path in trained if not (path.is_file() and path.stat().st_size > 0)]
    if missing:
        where = f"--checkpoint {folder}" if checkpoint is not None else str(folder)
        raise WeightsError(f"{where}: no trained D2M there (missing {', '.join(missing)})", hint=TRAIN_HINT)
    config = folder / D2M_CONFIG_FILE
    autoencoder = check.file("d2m", f"{DMAE_FOLDER}/config.json").parent
    check.file("d2m", f"{DMAE_FOLDER}/pytorch_model.bin")
    check.raise_if_missing()
    files = {**check.files, "d2m": [*check.files["d2m"], *trained, *([config] if config.is_file() else [])]}
    return D2MWeights(folder, autoencoder, motion_frames(config), files)


def motion_frames(path: Path) -> int:
    """MOT's window in motion frames, from the folder's d2m.json at `path` (torch-free), else upstream's 356."""
    if not path.is_file():
        return DEFAULT_MOTION_FRAMES
    try:
        frames = json.loads(path.read_text())["mot"]["num_frames"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: not a D2M config ({type(error).__name__}: {error})"[:300], model="d2m",
                           hint=TRAIN_HINT) from None
    if not isinstance(frames, int) or frames < 1:
        raise WeightsError(f"{path}: mot.num_frames must be a positive integer, got {frames!r}", model="d2m")
    return frames


def check_video(request: D2MRequest, motions: dict[Path, np.ndarray]) -> Path | None:
    """--video: one motion file only (it is that dance's video), and a file with a video stream."""
    if request.video is None:
        return None
    if len(motions) > 1:
        raise BadInput(f"--video {request.video}: it is one dance's video, but {len(motions)} motion files were given",
                       hint="score one motion file per run with --video")
    probe(request.video).require_video()
    return request.video


# --------------------------------------------------------------------------------------------------------------
# Windows


def plan_windows(total_latents: int, num_motion_frames: int, motion_frames: int,
                 window: int = WINDOW_LATENTS, overlap: int = OVERLAP_LATENTS) -> list[Window]:
    """Windows of `window` latent frames covering `total_latents`: every `window - overlap` frames, the last one
    ending at the end; each window's motion is the `motion_frames` frames starting at its own time (latent frame j
    starts at j * 512 / 44100 s), kept inside the motion."""
    total_latents = max(total_latents, window)
    starts = [*range(0, total_latents - window, window - overlap), total_latents - window]
    windows = []
    for i, start in enumerate(starts):
        motion_start = min(round(start * SAMPLES_PER_LATENT * MOTION_FPS / SAMPLE_RATE), num_motion_frames - motion_frames)
        held = starts[i - 1] + window - start if i else 0
        windows.append(Window(start, motion_start, held))
    return windows


def join_windows(pieces: list[np.ndarray], windows: list[Window]) -> np.ndarray:
    """Decoded windows (channels, samples) laid at their starts; where two overlap, a linear cross-fade over
    the shared samples, so the join has no step."""
    length = windows[-1].start * SAMPLES_PER_LATENT + pieces[-1].shape[1]
    music = np.zeros((pieces[0].shape[0], length), dtype=np.float32)
    for piece, window in zip(pieces, windows, strict=True):
        start, shared = window.start * SAMPLES_PER_LATENT, window.held * SAMPLES_PER_LATENT
        fade = np.ones(piece.shape[1], dtype=np.float32)
        fade[:shared] = (np.arange(shared, dtype=np.float32) + 0.5) / shared
        music[:, start : start + shared] *= 1 - fade[:shared]
        music[:, start : start + piece.shape[1]] += piece * fade
    return music

