"""MusicInfuser music-to-dance: a song in, a dance video with the song's excerpt muxed in out.

    validate inputs, options and weight files      (nothing loaded yet)
    plan one job per (input, seed)
    encode the prompt once with T5, then free T5
    load the DiT (+ merged adapter), the VAE and wav2vec2 once
    per job: excerpt -> wav2vec2 features -> Euler sampling with batched text CFG -> VAE decode
             -> H.264 + AAC video and sidecar JSON

Importing this module imports no torch: option and input errors answer before any heavy import.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput
from avtool.media import AudioStreamInfo, ensure_output_dir, load_audio, probe, write_video
from avtool.media.audio import resample
from avtool.media.video import fit_length
from avtool.pipelines.common import GenerationOptions, plan_jobs, resolve_device, resolve_dtype, write_sidecar
from avtool.ui import progress, say

DEFAULT_PROMPT = ("a professional female dancer dancing K-pop in an advanced dance setting in a studio with a white "
                  "background, captured from a front view")
DEFAULT_STEPS = 64
MODEL_FPS = 30  # the excerpt covers num_frames at the 30 fps MusicInfuser was trained on, whatever --fps says
EXCERPT_PAD_SECONDS = 0.09  # upstream's excerpt is num_frames/30 + 0.09 s (a convention shared with its preprocessing)
WAV2VEC_RATE = 16000
TEXT_TOKENS = 256
LATENT_CHANNELS = 12
SPATIAL_SCALE, TEMPORAL_SCALE, PATCH = 8, 6, 2


@dataclass(frozen=True)
class DanceRequest:
    """The dance-specific options (the shared ones are in GenerationOptions)."""

    prompt: str = DEFAULT_PROMPT
    num_frames: int = 145
    cfg_scale: float = 6.0
    fps: float = 30.0
    height: int | None = None  # None: from the weights' config
    width: int | None = None
    start: float | None = None  # None: drawn from the seed
    runner: str = "auto"
    tiling: bool = False


@dataclass(frozen=True)
class DanceWeights:
    """The checked weight locations a dance run reads."""

    root: Path
    mochi: Path
    adapter: Path
    wav2vec: Path


@dataclass(frozen=True)
class DanceResult:
    input: str
    output: str
    sidecar: str
    seed: int
    start: float
    num_frames: int
    fps: float
    width: int
    height: int
    seconds: float


def dance(inputs: list[Path], request: DanceRequest, opts: GenerationOptions) -> list[DanceResult]:
    """Make one dance video per (input, seed); models load once. Returns what was written."""
    # 1. Validate everything that needs no model.
    check_options(request, opts)
    songs = {path: probe(path).require_audio() for path in inputs}
    for path, audio in songs.items():
        if request.start is not None and request.start >= audio.duration:
            raise BadInput(f"--start {request.start:g}: {path} is only {audio.duration:.2f} s long")
    weights = check_weights(opts.weights_dir)
    height, width = resolve_size(request, weights)
    steps = opts.steps or DEFAULT_STEPS

    # 2. Plan the jobs.
    jobs = plan_jobs(inputs, opts, suffix="_generated")
    for folder in {job.output.parent for job in jobs}:
        ensure_output_dir(folder)
    if not opts.seeds:
        say(f"seed {jobs[0].seed if jobs else '-'} (drawn; pass --seed to repeat this run)", opts.quiet)
    if not jobs:
        say("nothing to do: every output exists (--skip-existing)", opts.quiet)
        return []

    from avtool.sampling import StepRunner, TextCfgDenoiser, linear_quadratic_sigmas, resolve_runner

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    runner_mode = resolve_runner(request.runner, device)
    silence_libraries()

    # 3. Load the models once (T5 only for as long as it takes to encode the one prompt).
    clock = Stopwatch()
    text, text_mask = encode_prompt(weights, request.prompt, device, dtype)
    transformer, vae, wav2vec = load_models(weights, device, dtype, request.tiling)
    step = StepRunner(TextCfgDenoiser(transformer, request.cfg_scale), runner_mode)
    sigmas = linear_quadratic_sigmas(steps).to(device)
    weights_info = weights_record(weights)
    load_seconds = clock.lap()

    results = []
    for job in jobs:
        timings: dict[str, float] = {}

        # 4. The song's excerpt (channel 0 resampled to 16 kHz, as upstream), and its wav2vec2 features.
        excerpt, sample_rate, start = music_excerpt(job.input, songs[job.input], request, job.seed)
        wave_16k = fit_length(resample(excerpt[0], sample_rate, WAV2VEC_RATE), math.ceil(WAV2VEC_RATE * excerpt_seconds(request)))
        audio = wav2vec(wave_16k).to(device, dtype)
        timings["features"] = clock.lap()

        # 5. Sample the latents from seeded noise (drawn on the CPU: the same seed gives the same video on any device).
        say(f"{job.input.name} -> {job.output.name}: seed {job.seed}, excerpt at {start:.2f} s, {steps} steps", opts.quiet)
        noise = initial_noise(job.seed, request.num_frames, height, width).to(device)
        latents = sample_latents(step, noise, sigmas, text, text_mask, audio, opts.quiet)
        timings["sampling"] = clock.lap()

        # 6. Decode, write the video with the excerpt, and the sidecar.
        frames = decode_latents(vae, latents, opts.quiet)
        timings["decode"] = clock.lap()
        write_video(frames, request.fps, job.output, audio=excerpt, sample_rate=sample_rate)
        timings["write"] = clock.lap()
        record = {"input": str(job.input), "seed": job.seed, "excerpt_start": start, "excerpt_seconds": excerpt_seconds(request),
                  "steps": steps, **asdict(request), "height": height, "width": width, "runner": runner_mode,
                  "device": device, "dtype": str(dtype).removeprefix("torch."), "weights": weights_info,
                  "timings": {"load": load_seconds, **timings}}
        sidecar = write_sidecar(job.output, record)
        results.append(DanceResult(str(job.input), str(job.output), str(sidecar), job.seed, start, request.num_frames,
                                   request.fps, width, height, sum(timings.values())))
        say(f"wrote {job.output}", opts.quiet)
    return results


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads)


def check_options(request: DanceRequest, opts: GenerationOptions) -> None:
    """Refuse (exit 2) options the model cannot run with, naming the nearest valid values."""
    n = request.num_frames
    if n < TEMPORAL_SCALE + 1 or (n - 1) % TEMPORAL_SCALE:
        raise BadInput(f"--num-frames {n}: must be 6k+1 (7, 13, ..., 145, ...); nearest valid: {_nearest(n - 1, TEMPORAL_SCALE, 1)}")
    for name, value in (("--height", request.height), ("--width", request.width)):
        if value is not None and (value < SPATIAL_SCALE * PATCH or value % (SPATIAL_SCALE * PATCH)):
            raise BadInput(f"{name} {value}: must be a multiple of {SPATIAL_SCALE * PATCH}; "
                           f"nearest valid: {_nearest(value, SPATIAL_SCALE * PATCH, 0)}")
    if not request.fps > 0:
        raise BadInput(f"--fps {request.fps:g}: must be positive")
    if not math.isfinite(request.cfg_scale):
        raise BadInput(f"--cfg-scale {request.cfg_scale}: must be a finite number")
    if request.start is not None and request.start < 0:
        raise BadInput(f"--start {request.start:g}: must not be negative")
    if opts.steps is not None and opts.steps < 2:
        raise BadInput(f"--steps {opts.steps}: Mochi's linear-quadratic schedule needs at least 2 steps")
    from avtool.sampling.runner import RUNNER_MODES

    if request.runner not in RUNNER_MODES:
        raise BadInput(f"--runner {request.runner}: expected one of {', '.join(RUNNER_MODES)}")


def _nearest(value: int, multiple: int, offset: int) -> str:
    """The valid values `k * multiple + offset` (k >= 1) either side of `value + offset`, as 'a or b'."""
    below = max(1, value // multiple) * multiple + offset
    above = below + multiple if below < value + offset else below
    return " or ".join(map(str, sorted({below, above})))


def check_weights(weights_dir: Path) -> DanceWeights:
    """Check that the config files of every model the run needs are there (exit 3 with the download hint otherwise).

    The tensor files are checked by each loader before it reads anything.
    """
    from avtool.models.musicinfuser import ADAPTER_FILE, ADAPTER_FOLDER, MOCHI_FOLDER, WAV2VEC_FOLDER
    from avtool.weights.layout import require_files

    mochi = require_files(weights_dir, MOCHI_FOLDER, [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json",
        "transformer/config.json", "vae/config.json"], MOCHI_FOLDER)
    adapter = require_files(weights_dir, ADAPTER_FOLDER, [ADAPTER_FILE], ADAPTER_FOLDER) / ADAPTER_FILE
    wav2vec = require_files(weights_dir, WAV2VEC_FOLDER, ["config.json", "preprocessor_config.json"], ADAPTER_FOLDER)
    return DanceWeights(Path(weights_dir), mochi, adapter, wav2vec)


def resolve_size(request: DanceRequest, weights: DanceWeights) -> tuple[int, int]:
    """(height, width) in pixels: the options, else the transformer config's latent sample size x 8 (Mochi-1: 480x848)."""
    config = json.loads((weights.mochi / "transformer" / "config.json").read_text())
    height = request.height or config.get("sample_height", 60) * SPATIAL_SCALE
    width = request.width or config.get("sample_width", 106) * SPATIAL_SCALE
    return height, width


# --------------------------------------------------------------------------------------------------------------
# Music


def excerpt_seconds(request: DanceRequest) -> float:
    return request.num_frames / MODEL_FPS + EXCERPT_PAD_SECONDS


def music_excerpt(path: Path, song: AudioStreamInfo, request: DanceRequest, seed: int) -> tuple[np.ndarray, int, float]:
    """The excerpt at the file's own rate, (channels, n), zero-padded if the song is shorter; and its start in seconds.

    Without --start the start sample is drawn as upstream draws it (`random.randint` seeded with the seed),
    so the same seed picks the same excerpt. Only the excerpt's window is decoded.
    """
    rate = song.sample_rate
    length = math.ceil(rate * excerpt_seconds(request))
    if request.start is not None:
        first = round(request.start * rate)
    else:
        total = round(song.duration * rate)
        first = random.Random(seed).randint(0, total - length) if total > length else 0
    samples, rate = load_audio(path, mono=False, start=first / rate, duration=length / rate)
    return fit_length(samples, length), rate, first / rate


# --------------------------------------------------------------------------------------------------------------
# Models


def load_pretrained(cls, folder: Path, **kwargs):
    """`cls.from_pretrained(folder)`, with a broken or incomplete folder reported as a weights error (exit 3)."""
    from avtool.errors import WeightsError
    from avtool.weights.layout import weights_variant

    try:
        return cls.from_pretrained(folder, variant=weights_variant(folder), **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise WeightsError(f"{folder}: cannot load {cls.__name__} ({str(error).splitlines()[0]})",
                           model=folder.parent.name) from error


def encode_prompt(weights: DanceWeights, prompt: str, device: str, dtype):
    """T5 embeddings and masks of [empty prompt, prompt], (2, 256, D) and (2, 256); T5 is freed afterwards.

    The empty prompt gets zeroed token ids and an all-False mask, as genmo does (diffusers:
    `force_zeros_for_empty_prompt=True`), which is also what MusicInfuser's caption dropout trained on.
    """
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = load_pretrained(AutoTokenizer, weights.mochi / "tokenizer")
    text_encoder = load_pretrained(T5EncoderModel, weights.mochi / "text_encoder", dtype=dtype).to(device).eval()
    embeds, masks = [], []
    for text in ("", prompt):
        tokens = tokenizer(text, padding="max_length", max_length=TEXT_TOKENS, truncation=True, add_special_tokens=True,
                           return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.bool().to(device)
        if text == "":
            ids, mask = torch.zeros_like(ids), torch.zeros_like(mask)
        with torch.inference_mode():
            embeds.append(text_encoder(ids, attention_mask=mask)[0])
        masks.append(mask)
    del text_encoder
    return torch.cat(embeds).to(dtype), torch.cat(masks)


def load_models(weights: DanceWeights, device: str, dtype, tiling: bool):
    """The MusicInfuser DiT (adapter merged), the Mochi VAE and the wav2vec2 encoder."""
    from diffusers import AutoencoderKLMochi

    from avtool.models.musicinfuser import Wav2VecEncoder, load_dance_transformer

    transformer = load_dance_transformer(weights.root, device, dtype)
    vae = load_pretrained(AutoencoderKLMochi, weights.mochi / "vae", torch_dtype=dtype).to(device).eval()
    if tiling:
        vae.enable_tiling()  # spatial tiles of 256 px with overlap blending
    wav2vec = Wav2VecEncoder.from_folder(weights.wav2vec, device)
    return transformer, vae, wav2vec


def initial_noise(seed: int, num_frames: int, height: int, width: int):
    """fp32 Gaussian latents (1, 12, T, H/8, W/8) from a CPU generator seeded with `seed` (as MochiPipeline with a CPU generator)."""
    import torch

    shape = (1, LATENT_CHANNELS, (num_frames - 1) // TEMPORAL_SCALE + 1, height // SPATIAL_SCALE, width // SPATIAL_SCALE)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def sample_latents(step, noise, sigmas, text, text_mask, audio, quiet: bool = False):
    """Euler sampling from `noise` along `sigmas` with the guided `step(x, sigma, text, text_mask, audio)`."""
    import torch

    from avtool.sampling import sample_euler

    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task("sampling", total=len(sigmas) - 1)
        return sample_euler(lambda x, sigma: step(x, sigma, text, text_mask, audio), noise, sigmas,
                            callback=lambda i, x: bar.advance(task))


def decode_latents(vae, latents, quiet: bool = False) -> np.ndarray:
    """Mochi VAE decode of DiT latents -> uint8 frames (F, H, W, 3)."""
    import torch

    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    with progress(quiet) as bar, torch.inference_mode():
        bar.add_task("decoding", total=None)
        video = vae.decode((latents * std / vae.config.scaling_factor + mean).to(vae.dtype), return_dict=False)[0]
    video = ((video[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()


def weights_record(weights: DanceWeights) -> dict[str, Any]:
    """The weight folders used, with the adapter's sha256 (the DiT shards are too big to hash on every run)."""
    from avtool.weights.manifest import digests

    return {"mochi": str(weights.mochi), "adapter": str(weights.adapter), "adapter_sha256": digests(weights.adapter).sha256,
            "wav2vec2": str(weights.wav2vec)}


def silence_libraries() -> None:
    """Our own progress bars replace the libraries' loading bars; Mochi's RoPE warns on every CPU forward."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")


class Stopwatch:
    """Seconds since the previous lap."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
