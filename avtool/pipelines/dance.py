"""MusicInfuser music-to-dance: a song in, a dance video with the song's excerpt muxed in out.

    validate inputs, options and weight files      (nothing imported or loaded yet)
    plan one job per (input, seed)                 (this process's shard of them)
    encode the prompt once with T5 (fp32, as upstream), then free T5
    load the DiT (+ merged adapter), the VAE and wav2vec2 once
    per job: excerpt -> wav2vec2 features -> Euler sampling with batched text CFG -> VAE decode
             -> H.264 + AAC video and sidecar JSON (the shared job driver in `common.py`)

Importing this module imports no torch: option and input errors answer before any heavy import.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput
from avtool.media import AudioStreamInfo, load_audio, probe, write_video
from avtool.media.resample import sinc_resample_window, sinc_window_bounds
from avtool.media.video import fit_length
from avtool.pipelines.common import (
    GenerationOptions,
    Job,
    Rendered,
    RunInfo,
    check_choice,
    check_not_silent,
    check_range,
    options_record,
    plan_jobs,
    run_jobs,
    weights_record,
)
from avtool.runtime import (
    RUNNER_MODES,
    Shard,
    Stopwatch,
    dtype_bytes,
    resolve_device,
    resolve_dtype,
    resolve_shard,
    runs_on_cpu,
    silence_libraries,
)
from avtool.ui import progress, say
from avtool.weights.layout import ADAPTER_FILE, ADAPTER_FOLDER, MOCHI_FOLDER, WAV2VEC_FOLDER, WeightsCheck

DEFAULT_PROMPT = ("a professional female dancer dancing K-pop in an advanced dance setting in a studio with a white "
                  "background, captured from a front view")
DEFAULT_STEPS = 64
MIN_STEPS = 2  # Mochi's linear-quadratic schedule has a linear and a quadratic part
MIN_FRAMES, MAX_FRAMES = 7, 997
MAX_SIZE = 4096
MIN_FPS, MAX_FPS = 1.0, 240.0
MAX_CFG = 100.0
MAX_START = 24 * 3600.0
MODEL_FPS = 30  # the excerpt covers num_frames at the 30 fps MusicInfuser was trained on, whatever --fps says
EXCERPT_PAD_SECONDS = 0.09  # upstream's excerpt is num_frames/30 + 0.09 s (a convention shared with its preprocessing)
UPSTREAM_SAMPLE_RATE = 44100  # upstream re-encodes every song to 44.1 kHz before drawing the excerpt start
WAV2VEC_RATE = 16000
TEXT_TOKENS = 256
LATENT_CHANNELS = 12
SPATIAL_SCALE, TEMPORAL_SCALE, PATCH = 8, 6, 2
MODEL_OF_FOLDER = {MOCHI_FOLDER: MOCHI_FOLDER, ADAPTER_FOLDER: ADAPTER_FOLDER, WAV2VEC_FOLDER: ADAPTER_FOLDER}
# the Mochi pipeline components a dance run loads, with the (library, class) to expect without a model_index.json
MOCHI_COMPONENTS = {"tokenizer": ("transformers", "T5TokenizerFast"), "text_encoder": ("transformers", "T5EncoderModel"),
                    "transformer": ("diffusers", "MochiTransformer3DModel"), "vae": ("diffusers", "AutoencoderKLMochi")}


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
    """The checked weight files a dance run reads."""

    root: Path
    mochi: Path
    transformer_files: list[Path]
    adapter: Path
    wav2vec: Path
    files: dict[str, list[Path]]  # model id -> every file checked (for the sidecar's hashes)


@dataclass
class DanceModels:
    """Everything loaded once per run."""

    step: Any  # StepRunner over the guided Mochi flow model
    vae: Any
    wav2vec: Any
    text: Any  # (2, 256, D) [empty prompt, prompt] T5 embeddings in the run dtype
    text_mask: Any
    sigmas: Any
    device: str
    noise_device: str


def dance(inputs: list[Path], request: DanceRequest, opts: GenerationOptions) -> Iterator[dict[str, Any]]:
    """Make one dance video per (input, seed); models load once. Yields each job's result as it is written."""
    # 1. Validate everything that needs no model.
    check_options(request, opts)
    songs = {path: probe(path).require_audio() for path in inputs}
    for path, audio in songs.items():
        if request.start is not None and not audio.start <= request.start < audio.start + audio.duration:
            raise BadInput(f"--start {request.start:g}: the audio of {path} runs from {audio.start:.2f} s to "
                           f"{audio.start + audio.duration:.2f} s")
    weights = check_weights(opts.weights_dir)
    height, width = resolve_size(request, weights)
    steps = opts.steps or DEFAULT_STEPS
    shard = resolve_shard(opts.shard)
    if runs_on_cpu(opts.device):  # a GPU's free memory is known once torch is imported, in load_models
        check_memory(weights, request, (height, width), "cpu", dtype_bytes(opts.dtype, "cpu"))

    # 2. Plan the jobs (this process's share of them).
    jobs = plan_jobs([{"music": path} for path in inputs], opts, suffix="_generated", shard=shard)

    # 3. Load once, then render each job.
    load = functools.partial(load_models, weights, request, opts, steps, shard, (height, width))
    render = functools.partial(render_job, songs=songs, request=request, size=(height, width), quiet=opts.quiet)
    yield from run_jobs(jobs, opts, load, render)


def load_models(weights: DanceWeights, request: DanceRequest, opts: GenerationOptions, steps: int, shard: Shard | None,
                size: tuple[int, int]) -> tuple[DanceModels, RunInfo]:
    """The prompt's T5 embeddings, the MusicInfuser DiT behind CFG and the step runner, the VAE and wav2vec2."""
    from diffusers import AutoencoderKLMochi

    from avtool.models.mochi import MochiFlowModel, use_masked_attention
    from avtool.models.musicinfuser import Wav2VecEncoder
    from avtool.sampling import CFGDenoiser, StepRunner, linear_quadratic_sigmas, resolve_runner
    from avtool.weights.loading import load_pretrained, reading_weights, weights_hint

    device = resolve_device(opts.device, shard)
    dtype = resolve_dtype(opts.dtype, device)
    runner_mode = resolve_runner(request.runner, device)
    if not runs_on_cpu(opts.device):  # checked in `dance` otherwise
        check_memory(weights, request, size, device, dtype.itemsize)
    silence_libraries()
    clock = Stopwatch()
    with weights_hint(weights.root, MODEL_OF_FOLDER):
        text, text_mask = encode_prompt(weights, request.prompt, device, dtype)
        vae = load_pretrained(AutoencoderKLMochi, weights.mochi / "vae", torch_dtype=dtype).to(device).eval()
        transformer = load_transformer(weights, device, dtype)
        with reading_weights(weights.wav2vec):
            wav2vec = Wav2VecEncoder.from_folder(weights.wav2vec, device)
    if request.tiling:
        vae.enable_tiling()  # spatial tiles of 256 px with overlap blending
    step = StepRunner(CFGDenoiser(MochiFlowModel(transformer), request.cfg_scale), runner_mode,
                      prepare_for_capture=use_masked_attention)
    models = DanceModels(step, vae, wav2vec, text, text_mask, linear_quadratic_sigmas(steps).to(device), device,
                         device if opts.generator == "device" else "cpu")
    info = RunInfo("dance", device, str(dtype).removeprefix("torch."), steps, weights_record(weights.files),
                   {**options_record(request), "height": size[0], "width": size[1], "runner": runner_mode,
                    "generator": opts.generator}, shard, clock.lap())
    return models, info


def render_job(models: DanceModels, job: Job, songs: dict[Path, AudioStreamInfo], request: DanceRequest,
               size: tuple[int, int], quiet: bool) -> Rendered:
    """One dance video: the excerpt's features, sampling, decoding, and the video with the excerpt muxed in."""
    song = job.inputs["music"]
    clock, timings = Stopwatch(), {}

    # The song's excerpt, and the wav2vec2 features of its channel 0 at 16 kHz (as upstream).
    start_sample = excerpt_start(songs[song], request, job.seed)
    start = songs[song].start + start_sample / UPSTREAM_SAMPLE_RATE  # in the file's timeline
    excerpt, sample_rate = music_excerpt(song, songs[song], request, start_sample)
    check_not_silent(song, excerpt, start, excerpt_seconds(request))
    audio = models.wav2vec(wav2vec_input(song, songs[song], request, start_sample)).to(models.device, models.text.dtype)
    timings["features"] = clock.lap()

    # Sample the latents from seeded noise.
    say(f"{song.name} -> {job.output.name}: seed {job.seed}, excerpt at {start:.2f} s, {len(models.sigmas) - 1} steps", quiet)
    noise = initial_noise(job.seed, request.num_frames, *size, device=models.noise_device).to(models.device)
    latents = sample_latents(models.step, noise, models.sigmas, models.text, models.text_mask, audio, quiet)
    timings["sampling"] = clock.lap()

    # Decode, then write the video with the excerpt.
    frames = decode_latents(models.vae, latents, quiet)
    timings["decode"] = clock.lap()
    write_video(frames, request.fps, job.output, audio=excerpt, sample_rate=sample_rate)
    timings["write"] = clock.lap()
    details = {"input": str(song), "start": start, "excerpt_seconds": excerpt_seconds(request), "num_frames": request.num_frames,
               "fps": request.fps, "height": size[0], "width": size[1]}
    return Rendered(details, timings)


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def check_options(request: DanceRequest, opts: GenerationOptions) -> None:
    """Refuse (exit 2) options the model cannot run with, naming the nearest valid values."""
    opts.check(min_steps=MIN_STEPS)
    n = request.num_frames
    if not MIN_FRAMES <= n <= MAX_FRAMES or (n - 1) % TEMPORAL_SCALE:
        nearest = _nearest(min(max(n, MIN_FRAMES), MAX_FRAMES) - 1, TEMPORAL_SCALE, 1)
        raise BadInput(f"--num-frames {n}: must be 6k+1 from {MIN_FRAMES} to {MAX_FRAMES} (7, 13, ..., 145, ...); nearest valid: {nearest}")
    for name, value in (("--height", request.height), ("--width", request.width)):
        step = SPATIAL_SCALE * PATCH
        if value is not None and (not step <= value <= MAX_SIZE or value % step):
            nearest = _nearest(min(max(value, step), MAX_SIZE), step, 0)
            raise BadInput(f"{name} {value}: must be a multiple of {step} from {step} to {MAX_SIZE}; nearest valid: {nearest}")
    check_range("--fps", request.fps, MIN_FPS, MAX_FPS)
    check_range("--cfg-scale", request.cfg_scale, 0, MAX_CFG)
    if request.start is not None:
        check_range("--start", request.start, 0, MAX_START, "seconds into the file")
    check_choice("--runner", request.runner, RUNNER_MODES)


def _nearest(value: int, multiple: int, offset: int) -> str:
    """The valid values `k * multiple + offset` (k >= 1) either side of `value + offset`, as 'a or b'."""
    below = max(1, value // multiple) * multiple + offset
    above = below + multiple if below < value + offset else below
    return " or ".join(map(str, sorted({below, above})))


def check_weights(weights_dir: Path) -> DanceWeights:
    """Check every file the loaders will read, for every model at once (exit 3 naming every model to download).

    The files follow from the classes that load them: the Mochi components' classes from `model_index.json`,
    wav2vec2's feature extractor and CTC model.
    """
    check = WeightsCheck(weights_dir)
    mochi = check.pipeline(MOCHI_FOLDER, MOCHI_FOLDER, MOCHI_COMPONENTS)
    adapter = check.file(ADAPTER_FOLDER, f"{ADAPTER_FOLDER}/{ADAPTER_FILE}")
    check.pretrained(ADAPTER_FOLDER, WAV2VEC_FOLDER, "Wav2Vec2FeatureExtractor", "transformers")
    check.pretrained(ADAPTER_FOLDER, WAV2VEC_FOLDER, "Wav2Vec2ForCTC", "transformers")
    check.raise_if_missing()
    transformer_files = [path for path in mochi["transformer"] if path.name != "config.json"]
    return DanceWeights(check.root, check.root / MOCHI_FOLDER, transformer_files, adapter, check.root / WAV2VEC_FOLDER, check.files)


def resolve_size(request: DanceRequest, weights: DanceWeights) -> tuple[int, int]:
    """(height, width) in pixels: the options, else the transformer config's latent sample size x 8 (Mochi-1: 480x848)."""
    from avtool.errors import WeightsError
    from avtool.weights.layout import download_hint

    path = weights.mochi / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})", hint=download_hint([MOCHI_FOLDER], weights.root)) from None
    height = request.height or config.get("sample_height", 60) * SPATIAL_SCALE
    width = request.width or config.get("sample_width", 106) * SPATIAL_SCALE
    return height, width


# --------------------------------------------------------------------------------------------------------------
# Memory (checked before any model loads)


@dataclass(frozen=True)
class MemoryModel:
    """What the peak memory of a dance run depends on, read from the weights' configs and safetensors headers."""

    dit_parameters: int  # DiT + adapter
    vae_parameters: int
    t5_parameters: int
    wav2vec_parameters: int
    width: int  # the DiT's hidden size
    vae_channels: int  # the VAE decoder's channels at full resolution


def memory_model(weights: DanceWeights) -> MemoryModel:
    from avtool.weights.layout import parameter_count

    def files(folder: str) -> list[Path]:
        return [p for p in weights.files[MOCHI_FOLDER] if p.parent.name == folder and p.suffix == ".safetensors"]

    transformer = json.loads((weights.mochi / "transformer" / "config.json").read_text())
    vae = json.loads((weights.mochi / "vae" / "config.json").read_text())
    return MemoryModel(
        dit_parameters=parameter_count([p for p in weights.transformer_files if p.suffix == ".safetensors"] + [weights.adapter]),
        vae_parameters=parameter_count(files("vae")),
        t5_parameters=parameter_count(files("text_encoder")),
        wav2vec_parameters=parameter_count([p for p in weights.files[ADAPTER_FOLDER] if p.parent == weights.wav2vec and p.suffix != ".json"]),
        width=transformer.get("num_attention_heads", 24) * transformer.get("attention_head_dim", 128),
        vae_channels=list(vae.get("decoder_block_out_channels", [128]))[0],
    )


def estimate_peak_bytes(model: MemoryModel, num_frames: int, size: tuple[int, int], dtype_bytes: int, tiling: bool) -> int:
    """An estimate of a dance run's peak memory on its device (`bench/dance.py` [3] compares it with the measured decode).

    Phases: T5 alone (fp32, freed after the prompt); the DiT, VAE and wav2vec2 resident while sampling (CFG batch
    of 2, one block's activations at a time); the same while decoding, with the VAE's full-resolution activations
    for every frame (a 256 px tile of them with --tiling) and the decoded video in fp32 and uint8.
    """
    height, width = size
    tokens = ((num_frames - 1) // TEMPORAL_SCALE + 1) * (height // (SPATIAL_SCALE * PATCH)) * (width // (SPATIAL_SCALE * PATCH))
    resident = (model.dit_parameters + model.vae_parameters) * dtype_bytes + model.wav2vec_parameters * 4
    sampling = 2 * (tokens + TEXT_TOKENS) * model.width * 16 * dtype_bytes
    return max(model.t5_parameters * 4, resident + sampling, resident + decode_bytes(model, num_frames, size, dtype_bytes, tiling))


def decode_bytes(model: MemoryModel, num_frames: int, size: tuple[int, int], dtype_bytes: int, tiling: bool) -> int:
    """The VAE decode's activations (full resolution, every frame; one 256 px tile with --tiling) and the video."""
    height, width = size
    area = min(height, 256) * min(width, 256) if tiling else height * width
    return num_frames * area * model.vae_channels * dtype_bytes * 4 + num_frames * height * width * 3 * (4 + 1)


def check_memory(weights: DanceWeights, request: DanceRequest, size: tuple[int, int], device: str, dtype_bytes: int) -> None:
    """Refuse (exit 2) a run whose estimated peak exceeds the device's free memory, saying what would fit."""
    from avtool.runtime import available_memory

    free = available_memory(device)
    model = memory_model(weights)
    needed = estimate_peak_bytes(model, request.num_frames, size, dtype_bytes, request.tiling)
    if free is None or needed <= free:
        return
    options = []
    if not request.tiling and estimate_peak_bytes(model, request.num_frames, size, dtype_bytes, True) <= free:
        options.append("--tiling")
    fitting = [n for n in range(MIN_FRAMES, request.num_frames, TEMPORAL_SCALE)
               if estimate_peak_bytes(model, n, size, dtype_bytes, True) <= free]
    if fitting:
        options.append(f"--num-frames {fitting[-1]} or fewer (with --tiling)")
    raise BadInput(f"this run needs about {needed / 2**30:.1f} GiB on {device}, which has {free / 2**30:.1f} GiB free "
                   f"({request.num_frames} frames at {size[1]}x{size[0]})",
                   hint=f"these would fit: {'; '.join(options)}" if options else "use a smaller --height/--width, or a device with more memory")


# --------------------------------------------------------------------------------------------------------------
# Music


def excerpt_seconds(request: DanceRequest) -> float:
    return request.num_frames / MODEL_FPS + EXCERPT_PAD_SECONDS


def excerpt_start(song: AudioStreamInfo, request: DanceRequest, seed: int) -> int:
    """The excerpt's first sample on upstream's 44.1 kHz grid, counted from the audio's own start: --start
    (seconds in the file), else drawn as upstream draws it.

    Upstream re-encodes the song to 44.1 kHz (moviepy: `int(44100 * duration)` samples, the duration rounded to
    1/100 s) and draws `random.randint(0, n - ceil(44100 * seconds))` seeded with the seed; drawing on that grid
    whatever the file's own rate picks the same excerpt as upstream.
    """
    if request.start is not None:
        return round((request.start - song.start) * UPSTREAM_SAMPLE_RATE)
    total, length = upstream_length(song), math.ceil(UPSTREAM_SAMPLE_RATE * excerpt_seconds(request))
    return random.Random(seed).randint(0, total - length) if total > length else 0


def upstream_length(song: AudioStreamInfo) -> int:
    return int(UPSTREAM_SAMPLE_RATE * round(song.duration, 2))


def music_excerpt(path: Path, song: AudioStreamInfo, request: DanceRequest, start: int) -> tuple[np.ndarray, int]:
    """The excerpt from 44.1 kHz sample `start`, at the file's own rate, (channels, n), zero-padded if the song is shorter.

    Only the excerpt's window is decoded.
    """
    rate = song.sample_rate
    first, length = round(start * rate / UPSTREAM_SAMPLE_RATE), math.ceil(rate * excerpt_seconds(request))
    samples, rate = load_audio(path, mono=False, start=song.start + first / rate, duration=length / rate)
    return fit_length(samples, length), rate


def wav2vec_input(path: Path, song: AudioStreamInfo, request: DanceRequest, start: int) -> np.ndarray:
    """wav2vec2's 16 kHz input for the request's excerpt at 44.1 kHz sample `start` (see `wave_16k`)."""
    return wave_16k(path, song, excerpt_seconds(request), start)


def wave_16k(path: Path, song: AudioStreamInfo, seconds: float, start: int) -> np.ndarray:
    """wav2vec2's 16 kHz input for `seconds` from 44.1 kHz sample `start`, computed as upstream computes it.

    Upstream resamples the whole 44.1 kHz song with torchaudio's windowed sinc, keeps channel 0, crops from
    `int(start / 44100 * 16000)` and zero-pads to `ceil(16000 * seconds)`. The same samples come from a window of
    the song with the kernel's margins (`avtool.media.resample`), so only a few seconds are decoded.
    """
    total = upstream_length(song)
    first, count = int(start / UPSTREAM_SAMPLE_RATE * WAV2VEC_RATE), math.ceil(WAV2VEC_RATE * seconds)
    lo, hi = sinc_window_bounds(first, count, UPSTREAM_SAMPLE_RATE, WAV2VEC_RATE, total)
    window = song_at_44k(path, song, lo, hi)
    return fit_length(sinc_resample_window(window, lo, first, count, UPSTREAM_SAMPLE_RATE, WAV2VEC_RATE, total), count)


def song_at_44k(path: Path, song: AudioStreamInfo, lo: int, hi: int) -> np.ndarray:
    """Channel 0 of the song at 44.1 kHz, samples [lo, hi) from the audio's start, zero past the end.

    A file at another rate is decoded from a little before `lo`, on a time where both rates have a sample,
    and converted (soxr; upstream's is ffmpeg's, so those files match upstream only approximately).
    """
    margin = 0.0 if song.sample_rate == UPSTREAM_SAMPLE_RATE else 0.05
    grid = math.gcd(song.sample_rate, UPSTREAM_SAMPLE_RATE)
    t0 = math.floor(max(lo / UPSTREAM_SAMPLE_RATE - margin, 0.0) * grid) / grid
    offset = round(t0 * UPSTREAM_SAMPLE_RATE)
    samples, _ = load_audio(path, sr=UPSTREAM_SAMPLE_RATE, mono=False, start=song.start + t0,
                            duration=(hi - offset) / UPSTREAM_SAMPLE_RATE + margin)
    return fit_length(samples[0, lo - offset:], hi - lo)


# --------------------------------------------------------------------------------------------------------------
# Models


def load_transformer(weights: DanceWeights, device: str, dtype, adapter: bool = True):
    """The MusicInfuser DiT from checked weights (`adapter=False`: the plain Mochi DiT)."""
    from avtool.models.musicinfuser import load_dance_transformer
    from avtool.weights.loading import weights_hint

    with weights_hint(weights.root, MODEL_OF_FOLDER):
        return load_dance_transformer(weights.mochi / "transformer", weights.transformer_files,
                                      weights.adapter if adapter else None, device, dtype)


def encode_prompt(weights: DanceWeights, prompt: str, device: str, dtype):
    """T5 embeddings and masks of [empty prompt, prompt], (2, 256, D) in `dtype` and (2, 256); T5 is freed afterwards.

    T5 runs in fp32, as upstream does (it runs once per run).
    """
    import torch

    tokenizer, text_encoder = load_t5(weights.mochi, device)
    embeds, masks = zip(*(t5_embed(tokenizer, text_encoder, text, device) for text in ("", prompt)), strict=True)
    del text_encoder
    return torch.cat(embeds).to(dtype), torch.cat(masks)


def load_t5(mochi: Path, device: str):
    """Mochi's T5 tokenizer and encoder (fp32, eval) from the checked Mochi folder."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    from avtool.weights.loading import load_pretrained

    tokenizer = load_pretrained(AutoTokenizer, mochi / "tokenizer")
    text_encoder = load_pretrained(T5EncoderModel, mochi / "text_encoder", dtype=torch.float32).to(device).eval()
    return tokenizer, text_encoder


def t5_embed(tokenizer, text_encoder, text: str, device: str):
    """One text's T5 embeddings (1, 256, D) in the encoder's dtype and its mask (1, 256) bool.

    The empty text gets zeroed token ids and an all-False mask, as genmo does (diffusers:
    `force_zeros_for_empty_prompt=True`), which is also what MusicInfuser's caption dropout trained on.
    """
    import torch

    tokens = tokenizer(text, padding="max_length", max_length=TEXT_TOKENS, truncation=True, add_special_tokens=True,
                       return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.bool().to(device)
    if text == "":
        ids, mask = torch.zeros_like(ids), torch.zeros_like(mask)
    with torch.inference_mode():
        return text_encoder(ids, attention_mask=mask)[0], mask


def initial_noise(seed: int, num_frames: int, height: int, width: int, device: str = "cpu"):
    """fp32 Gaussian latents (1, 12, T, H/8, W/8) from a generator on `device` seeded with `seed`.

    On the CPU (the default) the same seed gives the same video on any device, as MochiPipeline with a CPU
    generator; on CUDA it draws what upstream's seeded `torch.randn(..., device="cuda")` draws.
    """
    import torch

    shape = (1, LATENT_CHANNELS, (num_frames - 1) // TEMPORAL_SCALE + 1, height // SPATIAL_SCALE, width // SPATIAL_SCALE)
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), dtype=torch.float32, device=device)


def sample_latents(step, noise, sigmas, text, text_mask, audio, quiet: bool = False):
    """Euler sampling from `noise` along `sigmas` with the guided Mochi `step(x, sigma, text=, text_mask=, audio_features=)`."""
    import torch

    from avtool.sampling import sample_euler_flow

    with progress(quiet) as bar, torch.inference_mode():
        task = bar.add_task("sampling", total=len(sigmas) - 1)
        return sample_euler_flow(step, noise, sigmas, extra_args={"text": text, "text_mask": text_mask, "audio_features": audio},
                                 callback=None if bar.disable else lambda state: bar.advance(task))


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
