"""VidMuse video-to-music: a video in, music for it out (a 32 kHz WAV, and the video with the music muxed in).

    validate inputs, options and weight files      (nothing imported or loaded yet)
    plan one job per (video, seed)                 (this process's shard of them)
    load the VidMuse LM, video encoder and EnCodec once
    per job: 32 global frames over the whole video
             per window of at most 30 s (the previous window's last 0.5 s as its prompt):
                 its own span's local frames (~2 fps) -> [video; black video] conditioning
                 -> token loop with CFG on the logits (static KV cache, one step per token through StepRunner)
             EnCodec decode of all windows -> -16 LUFS with soft clipping -> WAV, and the video stream copied with it

Upstream (`VidMuse._generate_tokens`) conditions its last, shorter window on the wrong frames (the first frames of
the video's last 30 s); here every window is conditioned on the frames of its own time span.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput
from avtool.media import VideoStreamInfo, frames_at, mux, probe
from avtool.pipelines.common import (
    VIDEO_SUFFIXES,
    GenerationOptions,
    Job,
    Rendered,
    RunInfo,
    autocast_for,
    check_choice,
    check_output,
    check_range,
    collect_files,
    options_record,
    plan_jobs,
    run_jobs,
    weights_record,
    write_record,
)
from avtool.runtime import RUNNER_MODES, Shard, Stopwatch, resolve_device, resolve_shard, silence_libraries
from avtool.ui import progress, say
from avtool.weights.layout import CLIP_FOLDER, ENCODEC_FOLDER, VIDMUSE_FOLDER, WeightsCheck

MODELS = ("vidmuse",)
GLOBAL_FRAMES = 32  # frames spread over the whole video for the long-term stream (the app's `global_num_frames`)
MAX_DURATION, EXTEND_STRIDE = 30.0, 29.5  # seconds per window, seconds between window starts (0.5 s prompt overlap)
MAX_TOP_K, MAX_CFG, MAX_TEMPERATURE = 2048, 100.0, 10.0
MAX_DURATION_OPTION = 24 * 3600.0
TARGET_LUFS = -16.0
MODEL_OF_FOLDER = {VIDMUSE_FOLDER: "vidmuse", ENCODEC_FOLDER: "vidmuse", CLIP_FOLDER: "vidmuse"}


@dataclass(frozen=True)
class ScoreRequest:
    """The score-specific options (the shared ones are in GenerationOptions)."""

    model: str = "vidmuse"
    duration: float | None = None  # seconds of music; None: the video's, floored to whole seconds (upstream)
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_scale: float = 3.0
    runner: str = "auto"


@dataclass(frozen=True)
class Window:
    """One generation window, in LM frames (codec frames, 50 per second): where it starts, how many frames it
    covers, and how many of its first frames are the previous window's tail, given as the prompt."""

    start: int
    frames: int
    prompt: int


@dataclass(frozen=True)
class ScoreWeights:
    root: Path
    state_dict: Path
    compression: Path
    codec: Path
    clip: Path
    files: dict[str, list[Path]]


@dataclass
class ScoreModels:
    model: Any  # avtool.models.vidmuse.VidMuse
    lm_step: Any  # the cached VidMuseStep: its cross-attention source is set per window
    step: Any  # StepRunner over lm_step
    device: str
    autocast: Any  # a context-manager factory: the precision generation runs in


def score(inputs: list[Path], request: ScoreRequest, opts: GenerationOptions) -> Iterator[dict[str, Any]]:
    """Score every video (files, or folders of videos) once per seed; models load once. Yields each job's result."""
    # 1. Validate everything that needs no model.
    check_options(request, opts)
    videos = {path: check_video(path, request) for path in collect_files(inputs, VIDEO_SUFFIXES, "video")}
    weights = check_weights(opts.weights_dir)
    shard = resolve_shard(opts.shard)

    # 2. Plan the jobs; each writes `<stem>_scored.mp4` and `<stem>_scored.wav`.
    jobs = plan_jobs([{"video": path} for path in videos], opts, suffix="_scored", ext=".mp4", shard=shard)
    for job in jobs:
        check_output(Job(job.inputs, job.seed, job.output.with_suffix(".wav")), replace=opts.overwrite or opts.skip_existing)

    # 3. Load once, then render each job.
    load = functools.partial(load_models, weights, request, opts, shard)
    render = functools.partial(render_job, videos=videos, request=request, quiet=opts.quiet)
    yield from run_jobs(jobs, opts, load, render)


def load_models(weights: ScoreWeights, request: ScoreRequest, opts: GenerationOptions,
                shard: Shard | None) -> tuple[ScoreModels, RunInfo]:
    """VidMuse (LM, video encoder, EnCodec) and the cached LM step behind the step runner."""

    import torch

    from avtool.models.vidmuse import VidMuseStep, load_vidmuse, upstream_autocast
    from avtool.sampling import StepRunner, resolve_runner
    from avtool.weights.loading import load_checkpoint, weights_hint

    device = resolve_device(opts.device, shard)
    runner_mode = resolve_runner(request.runner, device)
    silence_libraries()
    clock = Stopwatch()
    with weights_hint(weights.root, MODEL_OF_FOLDER):
        model = load_vidmuse(load_checkpoint(weights.state_dict), load_checkpoint(weights.compression), weights.codec,
                             weights.clip, device, torch.float32)
    # upstream's precision: fp32 weights under fp16 autocast on CUDA, fp32 on the CPU; --dtype picks another autocast
    autocast, precision = autocast_for(opts.dtype, device)
    if opts.dtype == "auto":
        autocast = functools.partial(upstream_autocast, device)
        precision = "fp16 autocast" if device.startswith("cuda") else "fp32"
    max_frames = int(MAX_DURATION * model.frame_rate)
    max_video_tokens = int(MAX_DURATION * model.config.video_fps) * model.tokens_per_frame
    step = VidMuseStep(model.lm, rows=2, max_steps=max_frames + model.num_codebooks - 1, max_video_tokens=max_video_tokens)
    models = ScoreModels(model, step, StepRunner(step, runner_mode), device, autocast)
    info = RunInfo("score", device, precision, None, weights_record(weights.files),
                   {**options_record(request), "runner": runner_mode}, shard, clock.lap())
    return models, info


def render_job(models: ScoreModels, job: Job, videos: dict[Path, VideoStreamInfo], request: ScoreRequest,
               quiet: bool) -> Rendered:
    """One video's music: windows of tokens, decoded, normalised, written as WAV and muxed into the video."""
    import torch

    from avtool.analysis.loudness import normalize_loudness
    from avtool.models.vidmuse import delay_constraint, first_input, generation_steps, undo_delay_pattern
    from avtool.sampling import sample_tokens
    from avtool.weights.manifest import digests

    path, video = job.inputs["video"], videos[job.inputs["video"]]
    model, clock, timings = models.model, Stopwatch(), {}
    seconds = music_seconds(video, request)
    windows = plan_windows(int(seconds * model.frame_rate), model.frame_rate)
    say(f"{path.name} -> {job.output.name}: seed {job.seed}, {seconds:g} s of music in {len(windows)} window(s)", quiet)

    # The long-term stream: frames spread evenly over the whole video, the same for every window.
    global_frames = frames_tensor(path, video, global_indices(video.num_frames), model.frame_size).to(models.device)
    generator = torch.Generator("cpu").manual_seed(job.seed)
    special, codebooks = model.special_token, model.num_codebooks
    prompt = torch.zeros(1, codebooks, 0, dtype=torch.int64, device=models.device)
    pieces = []
    with progress(quiet) as bar, torch.inference_mode(), models.autocast():
        task = bar.add_task("sampling", total=sum(generation_steps(w.frames, w.prompt, codebooks) for w in windows))
        for window in windows:
            local = local_indices(window, model.frame_rate, model.config.video_fps, video)
            local_frames = frames_tensor(path, video, local, model.frame_size).to(models.device)
            models.lm_step.set_conditioning(model.cfg_conditioning(local_frames, global_frames))
            first = first_input(prompt, window.frames, special)
            tokens = sample_tokens(models.step, first, generation_steps(window.frames, window.prompt, codebooks), generator,
                                   temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                                   cfg_scale=request.cfg_scale, constrain=delay_constraint(prompt, window.frames, special),
                                   callback=lambda state: bar.advance(task))
            codes = undo_delay_pattern(torch.cat([first, tokens], dim=-1))
            pieces.append(codes[..., window.prompt:])
            prompt = codes[..., window.frames - overlap_frames(model.frame_rate):]
    timings["sampling"] = clock.lap()

    # at most 30 s of codes per EnCodec call: one call on all of them needs memory in proportion to the video's length
    music = model.decode(torch.cat(pieces, dim=-1), chunk_frames=int(MAX_DURATION * model.frame_rate))[0, 0].cpu().numpy()
    music = normalize_loudness(music, model.sample_rate, TARGET_LUFS)
    timings["decode"] = clock.lap()
    wav = write_wav(job.output.with_suffix(".wav"), music, model.sample_rate)
    digest = digests(wav)
    write_record(wav, {"subcommand": "score", "inputs": {"video": str(path)}, "seed": job.seed, "video_with_music": str(job.output),
                       "output": {"path": str(wav), "size": digest.size, "sha256": digest.sha256}})
    mux(path, wav, job.output, pad_audio=True)
    timings["write"] = clock.lap()
    details = {"input": str(path), "wav": str(wav), "music_seconds": seconds, "windows": len(windows),
               "sample_rate": model.sample_rate}
    return Rendered(details, timings)


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def check_options(request: ScoreRequest, opts: GenerationOptions) -> None:
    opts.check()
    if opts.steps is not None:
        raise BadInput(f"--steps {opts.steps}: score samples one token at a time; it has no steps",
                       hint="--duration sets how much music is made")
    check_choice("--model", request.model, MODELS)
    check_range("--top-k", request.top_k, 0, MAX_TOP_K, "0 is off")
    check_range("--top-p", request.top_p, 0, 1, "0 is off")
    check_range("--temperature", request.temperature, 0, MAX_TEMPERATURE, "0 is greedy")
    check_range("--cfg-scale", request.cfg_scale, 0, MAX_CFG)
    if request.duration is not None:
        check_range("--duration", request.duration, 1, MAX_DURATION_OPTION, "seconds")
    check_choice("--runner", request.runner, RUNNER_MODES)


def check_video(path: Path, request: ScoreRequest) -> VideoStreamInfo:
    video = probe(path).require_video()
    if video.duration < 1:
        raise BadInput(f"{path}: the video lasts {video.duration:.2f} s; music is made in whole seconds, at least 1",
                       hint="give a video of a second or more")
    if request.duration is not None and request.duration > video.duration:
        raise BadInput(f"--duration {request.duration:g}: {path} lasts only {video.duration:.2f} s")
    return video


def check_weights(weights_dir: Path) -> ScoreWeights:
    """Every file the VidMuse loaders read (exit 3 naming the download otherwise)."""
    check = WeightsCheck(weights_dir)
    state_dict = check.file("vidmuse", f"{VIDMUSE_FOLDER}/state_dict.bin")
    compression = check.file("vidmuse", f"{VIDMUSE_FOLDER}/compression_state_dict.bin")
    check.pretrained("vidmuse", ENCODEC_FOLDER, "EncodecModel", "transformers")
    check.file("vidmuse", f"{CLIP_FOLDER}/config.json")  # the vision tower's weights are in state_dict.bin
    check.file("vidmuse", f"{CLIP_FOLDER}/preprocessor_config.json")
    check.raise_if_missing()
    root = check.root
    return ScoreWeights(root, state_dict, compression, root / ENCODEC_FOLDER, root / CLIP_FOLDER, check.files)


# --------------------------------------------------------------------------------------------------------------
# Windows and frames


def music_seconds(video: VideoStreamInfo, request: ScoreRequest) -> float:
    """--duration, else the video's length floored to whole seconds (upstream: `int(VideoFileClip(path).duration)`)."""
    return request.duration if request.duration is not None else float(math.floor(video.duration + 1e-6))


def overlap_frames(frame_rate: int) -> int:
    return int(MAX_DURATION * frame_rate) - int(EXTEND_STRIDE * frame_rate)


def plan_windows(total: int, frame_rate: int) -> list[Window]:
    """Windows covering `total` LM frames, as `VidMuse._generate_tokens`: one if it fits in 30 s, else windows every
    29.5 s, each after the first taking the previous one's last 0.5 s as its prompt."""
    size, stride = int(MAX_DURATION * frame_rate), int(EXTEND_STRIDE * frame_rate)
    windows, start, prompt = [], 0, 0
    while start + prompt < total:
        windows.append(Window(start, min(total - start, size), prompt))
        start, prompt = start + stride, size - stride
    return windows


def local_indices(window: Window, frame_rate: int, video_fps: int, video: VideoStreamInfo) -> np.ndarray:
    """The source frames of a window's short-term stream: from the window's own start, `video_fps` per second.

    Upstream takes every `ceil(fps / video_fps)`-th source frame (so a 25 fps video gets ~1.92 frames per second)
    and repeats the last frame past the end; its stream index for a time t is `int(video_fps * t)`.
    """
    interval = math.ceil(video.fps / video_fps)
    first = int(window.start * video_fps / frame_rate)
    count = int(window.frames * video_fps / frame_rate)
    return np.minimum((first + np.arange(count)) * interval, video.num_frames - 1)


def global_indices(num_frames: int) -> np.ndarray:
    """`torch.linspace(0, frame_count - 1, 32).long()`: the long-term stream's frames over the whole video."""
    return np.linspace(0, num_frames - 1, GLOBAL_FRAMES).astype(np.int64)


def frames_tensor(path: Path, video: VideoStreamInfo, indices: np.ndarray, size: int):
    """Frames `indices` squashed to `size` x `size` (upstream `Resize((224, 224))`, no crop) as (1, T, 3, S, S) uint8."""
    import torch

    order = np.argsort(indices, kind="stable")
    decoded = np.concatenate(list(frames_at(path, indices[order], (size, size), video=video)))
    frames = np.empty_like(decoded)
    frames[order] = decoded
    return torch.from_numpy(frames).permute(0, 3, 1, 2)[None]


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM mono WAV, written atomically (upstream `audio_write` writes 16-bit PCM)."""
    import soundfile

    from avtool.media import atomic_output

    with atomic_output(path) as tmp:
        soundfile.write(tmp, np.clip(samples, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    return path
