"""MusicInfuser training data: a folder of dance videos in, training clips and their cached features out.

This is upstream's `preprocess.bash` (trim_and_crop_videos.py, encode_videos.py, embed_captions.py) as one run:

    validate the options, the weights and the output folder      (nothing imported or loaded yet)
    per video: probe it, draw its segments (seeded), cut each missing clip with ffmpeg, write each clip's caption
    per model, loaded only when some clip lacks its file, then freed: VAE latents, T5 embeddings, wav2vec2 features

Per clip `<stem>.seg{k}` (k counts the video's segments, one caption per segment):
    .mp4                H.264 + AAC at 44.1 kHz, the Mochi size read from the weights, 30 fps, `clip_seconds` long
    .txt                the caption: `<stem>.txt` beside the video, else --caption, else "a dance video"
    .latent.pt          {mean, logvar}: raw (not normalised) Mochi VAE posterior of the first num_frames frames,
                        each (1, 12, (num_frames - 1) / 6 + 1, height / 8, width / 8) fp32
    .embed_.pt          {y_mask: [(1, 256) bool], y_feat: [(1, 256, D) fp32]}: T5 of the caption
    .embed.pt           the same for the basic prompt "a dance video"
    .audio_wav2vec.pt   {audio_embeddings: (1, T_a, C) fp32}: wav2vec2 of the clip's audio from its start
Every file is written under a temporary name and renamed when complete; one that exists and loads is kept, so a
re-run (or a run after a kill) does only what is missing. A video that cannot give a clip is reported with its
reason, and the run goes on.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avtool.errors import BadInput
from avtool.media import atomic_output, ensure_output_dir, probe, read_frames
from avtool.media.clips import CropWindow, crop_window, cut_clip
from avtool.pipelines.common import VIDEO_SUFFIXES, check_choice, check_range
from avtool.pipelines.dance import (
    EXCERPT_PAD_SECONDS,
    MAX_FRAMES,
    MIN_FRAMES,
    MOCHI_COMPONENTS,
    MODEL_FPS,
    MODEL_OF_FOLDER,
    TEMPORAL_SCALE,
    DanceRequest,
    resolve_size,
)
from avtool.runtime import check_device, check_dtype, silence_libraries
from avtool.ui import progress
from avtool.weights.layout import ADAPTER_FOLDER, MOCHI_FOLDER, WAV2VEC_FOLDER, WeightsCheck

CROPS = ("center", "random")
EDGE_EXCLUDE = 0.05  # random segments start past the first 5% of the video and end before its last 5%, as upstream
BASIC_PROMPT = "a dance video"  # upstream's basic prompt for non-AIST videos, and the default caption
MAX_CLIPS_PER_MINUTE = 600.0
LATENT_FILE, DETAILED_EMBED_FILE, BASIC_EMBED_FILE, AUDIO_FILE = ".latent.pt", ".embed_.pt", ".embed.pt", ".audio_wav2vec.pt"
FILE_KEYS = {LATENT_FILE: {"mean", "logvar"}, DETAILED_EMBED_FILE: {"y_mask", "y_feat"},
             BASIC_EMBED_FILE: {"y_mask", "y_feat"}, AUDIO_FILE: {"audio_embeddings"}}


@dataclass(frozen=True)
class DancePreprocessOptions:
    """`avtool preprocess dance` options."""

    num_frames: int = 73
    crop: str = "random"  # "random": clips_per_minute seeded segments per minute of video; "center": one, mid-video
    clips_per_minute: float = 5.0
    caption: str | None = None  # for videos without a `<stem>.txt` beside them
    seed: int | None = None  # None: drawn, and reported in the summary
    device: str = "auto"
    dtype: str = "auto"  # the VAE's; T5 and wav2vec2 run in fp32


@dataclass(frozen=True)
class Rejection:
    path: Path  # a source video, or a clip that failed after it was cut
    reason: str


@dataclass
class PreprocessSummary:
    """What a run did, clip by clip (a clip is named by its .mp4)."""

    out_dir: Path
    seed: int
    size: tuple[int, int]  # (height, width) of the clips
    written: list[Path] = field(default_factory=list)  # clips with at least one file written by this run
    skipped: list[Path] = field(default_factory=list)  # clips complete before this run
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "seed": self.seed, "height": self.size[0], "width": self.size[1],
                "written": len(self.written), "skipped": len(self.skipped), "rejected": len(self.rejected),
                "written_clips": [str(p) for p in self.written], "skipped_clips": [str(p) for p in self.skipped],
                "rejections": [{"path": str(r.path), "reason": r.reason} for r in self.rejected]}


@dataclass(frozen=True)
class Clip:
    """One segment of one source video, and where its files go."""

    source: Path
    start: float  # seconds into the source
    window: CropWindow  # of the source's frame
    base: Path  # out_dir/<relative folder>/<stem>.seg{k}, without a suffix

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def video(self) -> Path:
        return self.file(".mp4")


@dataclass(frozen=True)
class PreprocessWeights:
    """The checked weight folders a preprocessing run reads (`.mochi` and `.root` as `resolve_size` reads them)."""

    root: Path
    mochi: Path
    wav2vec: Path


@dataclass
class Run:
    """What every step of one run reads, and what it records."""

    options: DancePreprocessOptions
    weights: PreprocessWeights
    summary: PreprocessSummary
    quiet: bool
    touched: set[Path] = field(default_factory=set)  # clips (.mp4) with a file written by this run

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the clips, as ffmpeg takes it."""
        return self.summary.size[1], self.summary.size[0]


def preprocess_dance(videos_dir: Path, out_dir: Path, options: DancePreprocessOptions, weights_dir: Path,
                     quiet: bool = False) -> PreprocessSummary:
    """Cut training clips out of every video under `videos_dir` into `out_dir` and cache their features (see the
    module's note); return what was written, skipped and rejected."""
    # 1. Validate everything that needs no model.
    check_options(options)
    videos = find_videos(videos_dir, out_dir)
    weights = check_weights(weights_dir)
    height, width = resolve_size(DanceRequest(), weights)
    ensure_output_dir(out_dir)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    run = Run(options, weights, PreprocessSummary(out_dir, seed, (height, width)), quiet)

    # 2. Cut the clips (ffmpeg only), then cache each model's features for the clips that lack them.
    clips = cut_all(videos, videos_dir, run)
    for step in (cache_latents, cache_text_embeddings, cache_audio_features):
        clips = step(clips, run)
    for clip in clips:
        (run.summary.written if clip.video in run.touched else run.summary.skipped).append(clip.video)
    return run.summary


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def check_options(options: DancePreprocessOptions) -> None:
    n = options.num_frames
    if not MIN_FRAMES <= n <= MAX_FRAMES or (n - 1) % TEMPORAL_SCALE:
        raise BadInput(f"--num-frames {n}: must be 6k+1 from {MIN_FRAMES} to {MAX_FRAMES} (7, 13, ..., 73, ..., 145, ...)")
    check_choice("--crop", options.crop, CROPS)
    check_range("--clips-per-minute", options.clips_per_minute, 1e-3, MAX_CLIPS_PER_MINUTE)
    if options.caption is not None and not options.caption.strip():
        raise BadInput("--caption: must not be empty", hint="leave it out for the default caption, \"a dance video\"")
    check_device(options.device)
    check_dtype(options.dtype)


def find_videos(videos_dir: Path, out_dir: Path) -> list[Path]:
    """The video files under `videos_dir` (recursively, as upstream), leaving out hidden files and `out_dir`."""
    if not videos_dir.is_dir():
        raise BadInput(f"{videos_dir}: no such folder", hint="give the folder that holds the videos")
    out = out_dir.resolve()
    videos = sorted(path for path in videos_dir.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
                    and not path.name.startswith(".") and not path.resolve().is_relative_to(out))
    if not videos:
        raise BadInput(f"{videos_dir}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    return videos


def check_weights(weights_dir: Path) -> PreprocessWeights:
    """Check the files of the models preprocessing loads: Mochi's VAE and T5 (and the DiT's config, for the size), wav2vec2."""
    check = WeightsCheck(weights_dir)
    components = {name: MOCHI_COMPONENTS[name] for name in ("tokenizer", "text_encoder", "vae")}
    check.pipeline(MOCHI_FOLDER, MOCHI_FOLDER, components)
    check.file(MOCHI_FOLDER, f"{MOCHI_FOLDER}/transformer/config.json")
    check.pretrained(ADAPTER_FOLDER, WAV2VEC_FOLDER, "Wav2Vec2FeatureExtractor", "transformers")
    check.pretrained(ADAPTER_FOLDER, WAV2VEC_FOLDER, "Wav2Vec2ForCTC", "transformers")
    check.raise_if_missing()
    return PreprocessWeights(check.root, check.root / MOCHI_FOLDER, check.root / WAV2VEC_FOLDER)


def clip_seconds(num_frames: int) -> float:
    """A clip's length: num_frames/30 + 0.09 s to one decimal, as upstream's `printf "%.1f"` (2.5 s for 73 frames)."""
    return round(num_frames / MODEL_FPS + EXCERPT_PAD_SECONDS, 1)


# --------------------------------------------------------------------------------------------------------------
# Clips


def cut_all(videos: list[Path], videos_dir: Path, run: Run) -> list[Clip]:
    """Every video's clips, cut where missing, each with its caption; videos that cannot give one are rejected."""
    clips: list[Clip] = []
    claimed: dict[Path, Path] = {}  # clip base of segment 0 -> the video that gave it (a.mp4 and a.mov would collide)
    with progress(run.quiet) as bar:
        task = bar.add_task("cutting clips", total=len(videos))
        for video in videos:
            relative = video.relative_to(videos_dir)
            base = run.summary.out_dir / relative.parent / relative.stem
            try:
                if base in claimed:
                    raise BadInput(f"its clips would overwrite those of {claimed[base]}")
                claimed[base] = video
                # seeded per video, so a video's segments do not depend on the others
                rng = random.Random(f"{run.summary.seed}:{relative.as_posix()}")
                planned = plan_clips(video, base, run.options, rng, run.frame_size)
            except (BadInput, RuntimeError) as error:  # RuntimeError: ffmpeg failed on this video
                run.summary.rejected.append(Rejection(video, reason_of(error, video)))
                planned = []
            for clip in planned:
                try:
                    cut_if_missing(clip, run)
                    clips.append(clip)
                except (BadInput, RuntimeError) as error:
                    run.summary.rejected.append(Rejection(clip.video, reason_of(error, clip.source)))
            bar.advance(task)
    return clips


def plan_clips(video: Path, base: Path, options: DancePreprocessOptions, rng: random.Random,
               size: tuple[int, int]) -> list[Clip]:
    """The video's segments, for clips of `size` (width, height); BadInput (its reason) when it cannot give one."""
    info = probe(video)
    if info.video is None or info.video.num_frames == 0:
        raise BadInput("no video track")
    if info.audio is None:
        raise BadInput("no audio track")
    if info.video.width < size[0] or info.video.height < size[1]:
        raise BadInput(f"{info.video.width}x{info.video.height} is smaller than the clip size {size[0]}x{size[1]}")
    duration = min(info.video.duration, info.audio.start + info.audio.duration)
    seconds = clip_seconds(options.num_frames)
    if duration < seconds:
        raise BadInput(f"too short for one clip: {duration:.2f} s, a clip of {options.num_frames} frames needs {seconds:g} s")
    starts = segment_starts(duration, seconds, options, rng)
    window = crop_window((info.video.width, info.video.height), size)
    return [Clip(video, start, window, base.with_name(f"{base.name}.seg{k}")) for k, start in enumerate(starts)]


def segment_starts(duration: float, seconds: float, options: DancePreprocessOptions, rng: random.Random) -> list[float]:
    """Upstream's segments: ceil(minutes x clips_per_minute) uniform random starts with the ends excluded, or one
    centred clip (`--crop center`, and videos too short for the exclusion, which upstream skipped by mistake)."""
    first, last = duration * EDGE_EXCLUDE, duration * (1 - EDGE_EXCLUDE) - seconds
    if options.crop == "center" or last <= first:
        return [(duration - seconds) / 2]
    return [rng.uniform(first, last) for _ in range(math.ceil(duration / 60 * options.clips_per_minute))]


def cut_if_missing(clip: Clip, run: Run) -> None:
    """Cut the clip (dropping any features of an earlier cut) and write its caption unless they exist; BadInput when
    the cut comes out too short."""
    num_frames = run.options.num_frames
    if not clip_is_valid(clip.video, num_frames):
        for suffix in FILE_KEYS:  # features of an earlier cut describe other frames
            clip.file(suffix).unlink(missing_ok=True)
        cut_clip(clip.source, clip.video, clip.start, clip_seconds(num_frames), clip.window, run.frame_size, MODEL_FPS)
        run.touched.add(clip.video)
        if not clip_is_valid(clip.video, num_frames):
            clip.video.unlink()
            raise BadInput(f"its clip from {clip.start:.2f} s has fewer than {num_frames} frames or no audio")
    if not clip.file(".txt").is_file():
        write_text(clip.file(".txt"), caption_for(clip.source, run.options))
        run.touched.add(clip.video)


def clip_is_valid(path: Path, num_frames: int) -> bool:
    """Whether a cut clip is there, readable, with audio and at least `num_frames` frames."""
    if not path.is_file():
        return False
    try:
        info = probe(path)
    except BadInput:
        return False
    return info.audio is not None and info.video is not None and info.video.num_frames >= num_frames


def caption_for(video: Path, options: DancePreprocessOptions) -> str:
    """`<stem>.txt` beside the video when it holds text, else --caption, else the basic prompt."""
    beside = video.with_suffix(".txt")
    text = beside.read_text(errors="replace").strip() if beside.is_file() else ""
    return text or options.caption or BASIC_PROMPT


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text + "\n")


def reason_of(error: Exception, video: Path) -> str:
    """The error's message without the video's own name in front (the rejection names it)."""
    message = getattr(error, "message", str(error))
    return message.removeprefix(f"{video}: ")


# --------------------------------------------------------------------------------------------------------------
# Cached features (one model at a time, loaded only when some clip lacks its file)

Writer = Callable[[Clip], None]


def cache_latents(clips: list[Clip], run: Run) -> list[Clip]:
    def load() -> Writer:
        import torch
        from diffusers import AutoencoderKLMochi

        from avtool.runtime import resolve_device, resolve_dtype
        from avtool.weights.loading import load_pretrained

        device = resolve_device(run.options.device)
        dtype = resolve_dtype(run.options.dtype, device)
        vae = load_pretrained(AutoencoderKLMochi, run.weights.mochi / "vae", torch_dtype=dtype).to(device).eval()
        num_frames = run.options.num_frames

        def write(clip: Clip) -> None:
            frames = read_frames(clip.video, num_frames=num_frames)
            if len(frames) < num_frames:
                raise BadInput(f"{clip.video}: fewer than {num_frames} frames")
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(device, dtype) / 127.5 - 1
            mean, logvar = vae_posterior(vae, video)
            save(clip.file(LATENT_FILE), {"mean": mean, "logvar": logvar})
        return write

    return cache(clips, [LATENT_FILE], "VAE latents", load, run)


def vae_posterior(vae, video):
    """The Mochi VAE encoder's mean and log-variance (1, 12, T', h, w) as fp32 on the CPU.

    Read from the posterior's parameters rather than `latent_dist.logvar`, which diffusers clamps to [-30, 20]:
    upstream's encoder stores them unclamped.
    """
    import torch

    with torch.inference_mode():
        parameters = vae.encode(video).latent_dist.parameters.float().cpu()
    mean, logvar = parameters.chunk(2, dim=1)
    return mean.clone(), logvar.clone()  # clones: a saved view would carry the whole storage


def cache_text_embeddings(clips: list[Clip], run: Run) -> list[Clip]:
    def load() -> Writer:
        from avtool.pipelines.dance import load_t5, t5_embed
        from avtool.runtime import resolve_device

        device = resolve_device(run.options.device)
        tokenizer, text_encoder = load_t5(run.weights.mochi, device)
        embedded: dict[str, dict[str, list]] = {}

        def conditioning(text: str) -> dict[str, list]:
            if text not in embedded:  # most clips share their video's caption, and all share the basic prompt
                feat, mask = t5_embed(tokenizer, text_encoder, text, device)
                embedded[text] = {"y_mask": [mask.cpu()], "y_feat": [feat.float().cpu()]}
            return embedded[text]

        def write(clip: Clip) -> None:
            caption = clip.file(".txt").read_text(errors="replace").strip() or BASIC_PROMPT
            for suffix, text in ((DETAILED_EMBED_FILE, caption), (BASIC_EMBED_FILE, BASIC_PROMPT)):
                if not loads(clip.file(suffix)):
                    save(clip.file(suffix), conditioning(text))
        return write

    return cache(clips, [DETAILED_EMBED_FILE, BASIC_EMBED_FILE], "T5 embeddings", load, run)


def cache_audio_features(clips: list[Clip], run: Run) -> list[Clip]:
    """wav2vec2 on the first ceil(16000 x clip seconds) samples of the clip's audio, through `avtool dance`'s path."""
    def load() -> Writer:
        from avtool.models.musicinfuser import Wav2VecEncoder
        from avtool.pipelines.dance import wave_16k
        from avtool.runtime import resolve_device
        from avtool.weights.loading import reading_weights

        with reading_weights(run.weights.wav2vec):
            encoder = Wav2VecEncoder.from_folder(run.weights.wav2vec, resolve_device(run.options.device))
        seconds = clip_seconds(run.options.num_frames)

        def write(clip: Clip) -> None:
            wave = wave_16k(clip.video, probe(clip.video).require_audio(), seconds, 0)
            save(clip.file(AUDIO_FILE), {"audio_embeddings": encoder(wave).float().cpu()})
        return write

    return cache(clips, [AUDIO_FILE], "wav2vec2 features", load, run)


def cache(clips: list[Clip], suffixes: list[str], label: str, load: Callable[[], Writer], run: Run) -> list[Clip]:
    """Write the `suffixes` files of the clips lacking one, loading the model (`load`) first if any does; a clip
    whose file cannot be made is rejected with the reason. Returns the clips still in the run."""
    from avtool.weights.loading import weights_hint

    missing = [clip for clip in clips if not all(loads(clip.file(suffix)) for suffix in suffixes)]
    if not missing:
        return clips
    silence_libraries()
    with weights_hint(run.weights.root, MODEL_OF_FOLDER):
        write = load()
    failed: set[Path] = set()
    with progress(run.quiet) as bar:
        task = bar.add_task(label, total=len(missing))
        for clip in missing:
            try:
                write(clip)
                run.touched.add(clip.video)
            except BadInput as error:
                run.summary.rejected.append(Rejection(clip.video, reason_of(error, clip.video)))
                failed.add(clip.video)
            bar.advance(task)
    return [clip for clip in clips if clip.video not in failed]


def loads(path: Path) -> bool:
    """Whether a cached file is there and loads with the keys it must hold (a cut-off write does not)."""
    import torch

    if not path.is_file():
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return False
    return isinstance(data, dict) and FILE_KEYS[suffix_of(path)] <= data.keys()


def suffix_of(path: Path) -> str:
    return next(suffix for suffix in FILE_KEYS if path.name.endswith(suffix))


def save(path: Path, data: dict[str, Any]) -> None:
    import torch

    with atomic_output(path) as tmp:
        torch.save(data, tmp)
