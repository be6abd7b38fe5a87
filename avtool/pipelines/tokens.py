"""TempoTokens audio-to-video: a sound in, a video of it out, with the sound muxed in.

    validate inputs (the audio window: long enough, not silent), options and weight files (nothing loaded yet)
    plan one job per (audio, seed)                 (this process's shard of them)
    load zeroscope (UNet3D, VAE, CLIP text encoder with the six placeholder tokens), BEATs and the mapper once;
    encode the negative prompt once
    per job: the audio window at 16 kHz mono -> BEATs (all 12 layers) -> mapper -> one token set per frame
             -> one text condition per frame -> DPM-Solver++ with CFG (in round-robin frame windows when
             --window-size is smaller than --num-frames) -> VAE decode in chunks of frames, streamed into the encoder
             -> mp4 with the audio window muxed in, and the sidecar JSON

Importing this module imports no torch: option and input errors answer before any heavy import.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput
from avtool.media import AudioStreamInfo, load_audio, probe, write_video
from avtool.media.resample import sinc_resample
from avtool.pipelines.common import (
    AUDIO_SUFFIXES,
    GenerationOptions,
    Job,
    Rendered,
    RunInfo,
    check_choice,
    check_not_silent,
    check_range,
    collect_files,
    options_record,
    plan_jobs,
    run_jobs,
    weights_record,
)
from avtool.runtime import (
    RUNNER_MODES,
    Shard,
    Stopwatch,
    resolve_device,
    resolve_dtype,
    resolve_shard,
    silence_libraries,
)
from avtool.ui import progress, say
from avtool.weights.layout import (
    BEATS_FILE,
    BEATS_FOLDER,
    MAPPER_FILE,
    MAPPERS,
    TEMPOTOKENS_FOLDER,
    ZEROSCOPE_FOLDER,
    WeightsCheck,
)

DEFAULT_STEPS, DEFAULT_FRAMES, DEFAULT_FPS = 25, 24, 12.0
DEFAULT_SIZE = 384  # upstream's -W/-H default
NATIVE_SAMPLE_SIZE = 32  # the published UNet's sample_size; a smaller one (tiny weights) brings its own size
MAX_FRAMES, MAX_SIZE, MAX_FPS, MAX_GUIDANCE, MAX_SECONDS = 1024, 4096, 240.0, 100.0, 24 * 3600.0
SIZE_STEP = 8  # the VAE's spatial scale
BEATS_RATE = 16000
FBANK_WINDOW, FBANK_SHIFT = 400, 160  # 25 ms / 10 ms at 16 kHz
PATCH, FREQUENCY_PATCHES = 16, 8  # BEATs' 16x16 patches over 128 mel bins
MODEL_OF_FOLDER = {ZEROSCOPE_FOLDER: "tempotokens", BEATS_FOLDER: "tempotokens", TEMPOTOKENS_FOLDER: "tempotokens"}
ZEROSCOPE_COMPONENTS = {"tokenizer": ("transformers", "CLIPTokenizer"), "text_encoder": ("transformers", "CLIPTextModel"),
                        "unet": ("diffusers", "UNet3DConditionModel"), "vae": ("diffusers", "AutoencoderKL")}


@dataclass(frozen=True)
class TokensRequest:
    """The tokens-specific options (the shared ones are in GenerationOptions)."""

    mapper: str = "vggsound"  # a dataset name under weights/tempotokens/, or a mapper .pth file
    prompt: str | None = None  # text around the audio tokens; None: the audio tokens alone
    negative_prompt: str = ""
    guidance: float = 25.0
    num_frames: int | None = None  # None: from --duration, else 24
    fps: float = DEFAULT_FPS
    height: int | None = None  # None: 384, or the tiny weights' own size
    width: int | None = None
    start: float = 0.0
    duration: float | None = None  # None: num_frames / fps (2 s by default, as upstream)
    window_size: int | None = None  # None: all frames in one window
    vae_batch_size: int = 8
    pool_dropout: float = 0.0
    runner: str = "auto"


@dataclass(frozen=True)
class Shape:
    """What one job makes, resolved from the request and the weights."""

    num_frames: int
    duration: float  # seconds of audio encoded (and muxed)
    height: int
    width: int
    window: int


@dataclass(frozen=True)
class TokensWeights:
    root: Path
    zeroscope: Path
    beats: Path
    mapper: Path
    files: dict[str, list[Path]]


@dataclass
class TokensModels:
    """Everything loaded once per run."""

    step: Any  # StepRunner over the guided UNet
    beats: Any
    mapper: Any
    text_encoder: Any
    tokenizer: Any
    placeholder_ids: tuple[int, ...]
    uncond: Any  # (F, 77, D) negative-prompt condition, one row per frame
    vae: Any
    scheduler_config: dict
    device: str
    dtype: Any


def tokens(inputs: list[Path], request: TokensRequest, opts: GenerationOptions) -> Iterator[dict[str, Any]]:
    """Make one video per (audio, seed); models load once. Yields each job's result as it is written."""
    # 1. Validate everything that needs no model.
    check_options(request, opts)
    shape_without_size = resolve_length(request)
    sounds = {path: check_audio(path, request, shape_without_size) for path in collect_files(inputs, AUDIO_SUFFIXES, "audio")}
    weights = check_weights(opts.weights_dir, request.mapper)
    shape = resolve_shape(request, weights)
    steps = opts.steps or DEFAULT_STEPS
    shard = resolve_shard(opts.shard)

    # 2. Plan the jobs; each writes `<stem>_tokens.mp4`.
    jobs = plan_jobs([{"audio": path} for path in sounds], opts, suffix="_tokens", shard=shard)

    # 3. Load once, then render each job.
    load = functools.partial(load_models, weights, request, opts, steps, shard, shape)
    render = functools.partial(render_job, sounds=sounds, request=request, shape=shape, steps=steps, quiet=opts.quiet)
    yield from run_jobs(jobs, opts, load, render)


def load_models(weights: TokensWeights, request: TokensRequest, opts: GenerationOptions, steps: int, shard: Shard | None,
                shape: Shape) -> tuple[TokensModels, RunInfo]:
    """zeroscope's UNet (behind CFG and the step runner), VAE and text encoder; BEATs; the mapper."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from avtool.models.beats import load_beats
    from avtool.models.tempotokens import AudioTokenMapper, FrameConditionedUNet, add_placeholder_tokens, encode_text
    from avtool.sampling import CFGDenoiser, StepRunner, read_scheduler_config, resolve_runner
    from avtool.weights.loading import load_checkpoint, load_pretrained, load_state_dict, weights_hint

    device = resolve_device(opts.device, shard)
    dtype = resolve_dtype(opts.dtype, device, auto_on_cuda="fp16")  # upstream's zeroscope; BEATs and the mapper stay fp32
    runner_mode = resolve_runner(request.runner, device)
    silence_libraries()
    clock = Stopwatch()
    with weights_hint(weights.root, MODEL_OF_FOLDER):
        tokenizer = load_pretrained(CLIPTokenizer, weights.zeroscope / "tokenizer")
        text_encoder = load_pretrained(CLIPTextModel, weights.zeroscope / "text_encoder")
        placeholder_ids = add_placeholder_tokens(tokenizer, text_encoder)
        text_encoder = text_encoder.to(device, dtype).eval()
        unet = load_pretrained(UNet3DConditionModel, weights.zeroscope / "unet").to(device, dtype).eval()
        vae = load_pretrained(AutoencoderKL, weights.zeroscope / "vae").to(device, dtype).eval()
        beats = load_beats(load_checkpoint(weights.beats), str(weights.beats)).to(device).eval()
        mapper = AudioTokenMapper.from_state_dict(load_state_dict(weights.mapper), str(weights.mapper)).to(device).eval()
        mapper.pool_dropout = request.pool_dropout
        check_mapper_fits(mapper, beats, text_encoder, weights.mapper)
        scheduler_config = read_scheduler_config(weights.zeroscope / "scheduler")
    with torch.inference_mode():
        uncond = encode_text(text_encoder, tokenizer, request.negative_prompt, shape.num_frames)
    step = StepRunner(CFGDenoiser(FrameConditionedUNet(unet), request.guidance), runner_mode)
    models = TokensModels(step, beats, mapper, text_encoder, tokenizer, placeholder_ids, uncond, vae, scheduler_config,
                          device, dtype)
    info = RunInfo("tokens", device, str(dtype).removeprefix("torch."), steps, weights_record(weights.files),
                   {**options_record(request), "num_frames": shape.num_frames, "duration": shape.duration,
                    "height": shape.height, "width": shape.width, "window_size": shape.window, "runner": runner_mode},
                   shard, clock.lap())
    return models, info


def render_job(models: TokensModels, job: Job, sounds: dict[Path, AudioStreamInfo], request: TokensRequest, shape: Shape,
               steps: int, quiet: bool) -> Rendered:
    """One video: the audio window's tokens, per-frame conditions, sampling, decoding, and the mp4 with the audio."""
    import torch

    from avtool.models.tempotokens import encode_frames, prompt_with_tokens

    path, sound = job.inputs["audio"], sounds[job.inputs["audio"]]
    clock, timings = Stopwatch(), {}
    say(f"{path.name} -> {job.output.name}: seed {job.seed}, {shape.duration:g} s from {request.start:g} s, "
        f"{shape.num_frames} frames, {steps} steps", quiet)

    # The audio window at 16 kHz mono, its BEATs features and one token set per frame.
    samples, rate = audio_window(path, sound, request.start, shape.duration)
    generator = torch.Generator("cpu").manual_seed(job.seed)
    with torch.inference_mode():
        waveform = torch.from_numpy(beats_waveform(samples, rate))[None].to(models.device)
        features = models.beats.extract_layer_features(waveform)
        timings["audio_encoding"] = clock.lap()
        features = features[:, : usable_tokens(features.shape[1], shape.num_frames)]
        audio_tokens = models.mapper(features, shape.num_frames, generator=generator)
        cond = encode_frames(models.text_encoder, models.tokenizer, prompt_with_tokens(request.prompt), audio_tokens,
                             models.placeholder_ids)
        context = torch.stack([models.uncond, cond]).to(models.dtype)  # (2, F, 77, D): [negative; audio] per frame
    timings["mapping"] = clock.lap()

    # Sample the latents from seeded noise, then decode them in chunks streamed into the video encoder.
    latents = sample_latents(models, context, shape, steps, job.seed, quiet)
    timings["sampling"] = clock.lap()
    write_video(decoded_frames(models.vae, latents, request.vae_batch_size), request.fps, job.output,
                audio=samples, sample_rate=rate)
    timings["decode_and_write"] = clock.lap()
    details = {"input": str(path), "start": request.start, "duration": shape.duration, "num_frames": shape.num_frames,
               "fps": request.fps, "height": shape.height, "width": shape.width, "audio_tokens": int(features.shape[1])}
    return Rendered(details, timings)


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def check_options(request: TokensRequest, opts: GenerationOptions) -> None:
    """Refuse (exit 2) options the model cannot run with."""
    opts.check()
    if request.mapper not in MAPPERS and not request.mapper.endswith((".pth", ".pt", ".bin", ".safetensors")):
        raise BadInput(f"--mapper {request.mapper}: unknown mapper",
                       hint=f"one of {', '.join(MAPPERS)}, or the path of a mapper file (.pth)")
    check_range("--guidance", request.guidance, 0, MAX_GUIDANCE, "1 is the prompt alone")
    check_range("--fps", request.fps, 1, MAX_FPS)
    if request.num_frames is not None:
        check_range("--num-frames", request.num_frames, 1, MAX_FRAMES)
    for name, value in (("--height", request.height), ("--width", request.width)):
        if value is not None and (not SIZE_STEP <= value <= MAX_SIZE or value % SIZE_STEP):
            raise BadInput(f"{name} {value}: must be a multiple of {SIZE_STEP} from {SIZE_STEP} to {MAX_SIZE}")
    check_range("--start", request.start, 0, MAX_SECONDS, "seconds into the audio")
    if request.duration is not None:
        check_range("--duration", request.duration, 0.1, MAX_SECONDS, "seconds")
    check_range("--vae-batch-size", request.vae_batch_size, 1, MAX_FRAMES, "frames per VAE decode")
    check_range("--pool-dropout", request.pool_dropout, 0, 0.99, "upstream: 0.5, always on")
    check_choice("--runner", request.runner, RUNNER_MODES)


def resolve_length(request: TokensRequest) -> Shape:
    """Frames, audio seconds and window from the options (size still unset): --num-frames and --duration default to
    each other (upstream: `num_frames = seconds * fps`), else 24 frames and 2 s."""
    if request.num_frames is not None:
        num_frames = request.num_frames
    elif request.duration is not None:
        num_frames = max(1, round(request.duration * request.fps))
    else:
        num_frames = DEFAULT_FRAMES
    duration = request.duration if request.duration is not None else num_frames / request.fps
    window = request.window_size or num_frames
    if not 1 <= window <= num_frames or num_frames % window:
        divisors = [d for d in range(1, num_frames + 1) if num_frames % d == 0]
        raise BadInput(f"--window-size {request.window_size}: must divide --num-frames {num_frames}",
                       hint=f"one of {', '.join(map(str, divisors))}")
    tokens = audio_token_count(duration)
    if tokens < num_frames:
        shortest = next(s / 10 for s in range(1, int(MAX_SECONDS * 10)) if audio_token_count(s / 10) >= num_frames)
        raise BadInput(f"{duration:g} s of audio gives {tokens} audio tokens, fewer than the {num_frames} frames "
                       "(every frame needs at least one)", hint=f"use --duration {shortest:g} or more, or fewer --num-frames")
    return Shape(num_frames, duration, 0, 0, window)


def audio_token_count(seconds: float) -> int:
    """BEATs tokens for `seconds` of 16 kHz audio: Kaldi frames (25 ms every 10 ms, whole frames only), in 16x16
    patches over 128 mel bins (8 frequency patches per 16 frames). 2 s: 198 frames -> 12 x 8 = 96 tokens."""
    samples = round(seconds * BEATS_RATE)
    frames = 1 + (samples - FBANK_WINDOW) // FBANK_SHIFT if samples >= FBANK_WINDOW else 0
    return frames // PATCH * FREQUENCY_PATCHES


def usable_tokens(tokens: int, num_frames: int) -> int:
    """The tokens the mapper averages: a whole number per frame. Upstream needs the count divisible by the frames
    (96 tokens, 24 frames); for other lengths the last tokens, less than one frame's share, are dropped."""
    return tokens - tokens % num_frames


def check_audio(path: Path, request: TokensRequest, shape: Shape) -> AudioStreamInfo:
    """The file's audio stream; its window [--start, --start + duration) must lie in it and must not be silent."""
    sound = probe(path).require_audio()
    end = request.start + shape.duration
    if end > sound.duration + 1e-3:
        longest = sound.duration - request.start
        hint = (f"use --duration {longest:.2f} or less" if longest >= 0.1 else "choose an earlier --start") + \
            f" (the audio lasts {sound.duration:.2f} s)"
        raise BadInput(f"{path}: the audio window {request.start:g}-{end:g} s runs past the end of its audio", hint=hint)
    samples, _ = audio_window(path, sound, request.start, shape.duration)
    check_not_silent(path, samples, request.start, shape.duration)
    return sound


def check_weights(weights_dir: Path, mapper: str) -> TokensWeights:
    """Every file the loaders read: zeroscope's components, the BEATs checkpoint and the chosen mapper."""
    check = WeightsCheck(weights_dir)
    check.pipeline("tempotokens", ZEROSCOPE_FOLDER, ZEROSCOPE_COMPONENTS)
    beats = check.file("tempotokens", f"{BEATS_FOLDER}/{BEATS_FILE}")
    if mapper in MAPPERS:
        mapper_path = check.file("tempotokens", f"{TEMPOTOKENS_FOLDER}/{mapper}/{MAPPER_FILE}")
    else:
        mapper_path = Path(mapper)
        if not mapper_path.is_file():
            raise BadInput(f"--mapper {mapper}: no such file", hint=f"one of {', '.join(MAPPERS)}, or a mapper file")
    check.raise_if_missing()
    return TokensWeights(check.root, check.root / ZEROSCOPE_FOLDER, beats, mapper_path, check.files)


def resolve_shape(request: TokensRequest, weights: TokensWeights) -> Shape:
    """The length from the options; the size from the options, else 384 x 384 (upstream), or for a UNet smaller
    than the published one (the tiny weights) its own `sample_size` x 8."""
    from avtool.errors import WeightsError
    from avtool.weights.layout import download_hint

    path = weights.zeroscope / "unet" / "config.json"
    try:
        sample_size = int(json.loads(path.read_text()).get("sample_size", NATIVE_SAMPLE_SIZE))
    except (OSError, ValueError, TypeError) as error:
        raise WeightsError(f"{path}: not a valid UNet config ({error})", hint=download_hint(["tempotokens"], weights.root)) from None
    default = DEFAULT_SIZE if sample_size >= NATIVE_SAMPLE_SIZE else sample_size * SIZE_STEP
    length = resolve_length(request)
    return Shape(length.num_frames, length.duration, request.height or default, request.width or default, length.window)


def check_mapper_fits(mapper, beats, text_encoder, path: Path) -> None:
    """The mapper reads all BEATs layers concatenated and writes text-encoder-wide tokens (9216 -> 1024 at full size):
    a mapper made for other models is a WeightsError (exit 3) here, not a shape error mid-run."""
    from avtool.errors import WeightsError

    features = beats.config.encoder_layers * beats.config.encoder_embed_dim
    width = text_encoder.get_input_embeddings().embedding_dim
    if (mapper.fc1.in_features, mapper.fc4.out_features) != (features, width):
        raise WeightsError(f"{path}: a mapper from {mapper.fc1.in_features} audio features to {mapper.fc4.out_features}-wide "
                           f"tokens does not fit this BEATs ({features} features) and text encoder (width {width})",
                           hint="use the mapper trained for these models (zeroscope_v2_576w + BEATs iter3+)")


# --------------------------------------------------------------------------------------------------------------
# Audio


def audio_window(path: Path, sound: AudioStreamInfo, start: float, seconds: float) -> tuple[np.ndarray, int]:
    """The window's samples at the file's own rate, (channels, n) float32 (upstream `cut_wav_file`)."""
    samples, rate = load_audio(path, mono=False, start=sound.start + start, duration=seconds)
    return samples[:, : int(seconds * rate)], rate


def beats_waveform(samples: np.ndarray, rate: int) -> np.ndarray:
    """BEATs' input as upstream makes it: each channel resampled to 16 kHz with torchaudio's windowed sinc, then the
    channels averaged."""
    if rate != BEATS_RATE:
        samples = np.stack([sinc_resample(channel, rate, BEATS_RATE) for channel in samples])
    return samples.mean(axis=0, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------
# Sampling and decoding


def sample_latents(models: TokensModels, context, shape: Shape, steps: int, seed: int, quiet: bool):
    """DPM-Solver++ (diffusers' multistep scheduler on zeroscope's config, as upstream) from seeded unit noise.

    The noise is drawn in fp32 on a CPU generator seeded with the job's seed, so a seed gives the same video on
    any device (upstream draws from the global generator after its always-on mapper dropout has used it, which no
    seed reproduces). With --window-size < --num-frames the frames are denoised in round-robin windows whose
    borders roll every step; each window gets its own frames' conditions (upstream passes every frame's conditions
    to every window, which does not run).
    """
    import torch

    from avtool.sampling import (
        RoundRobinDenoiser,
        load_scheduler,
        prime_shifts,
        sample_discrete,
        scale_initial_noise,
        window_offsets,
    )

    scheduler = load_scheduler("dpm-multistep", models.scheduler_config)
    scheduler.set_timesteps(steps)
    latent_shape = (1, models.vae.config.latent_channels, shape.num_frames, shape.height // SIZE_STEP, shape.width // SIZE_STEP)
    noise = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    x = scale_initial_noise(noise, scheduler).to(models.device, models.dtype)
    denoise = models.step
    if shape.window < shape.num_frames:
        shifts = prime_shifts(shape.window, np.random.default_rng(seed))
        denoise = RoundRobinDenoiser(models.step, shape.window, window_offsets(steps, shifts), frame_args=("context",))
    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task("sampling", total=steps)
        return sample_discrete(denoise, x, scheduler, extra_args={"context": context},
                               callback=None if bar.disable else lambda state: bar.advance(task))


def decoded_frames(vae, latents, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 frames (n, H, W, 3), `batch_size` frames per VAE decode, as upstream's `decode` (`latents / scaling_factor`,
    then `clamp(-1, 1).add(1).mul(127.5).byte()`: truncation, not rounding)."""
    import torch

    frames = latents[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    for first in range(0, frames.shape[0], batch_size):
        with torch.inference_mode():
            chunk = frames[first : first + batch_size].to(vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(chunk, return_dict=False)[0]
        yield pixels.float().clamp(-1, 1).add(1).mul(127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
