"""Training data: a folder of videos (or dance motions) in, training clips and their cached features out, for
MusicInfuser (`preprocess_dance`), TempoTokens (`preprocess_tokens`) and Dance2Music-Diffusion (`preprocess_d2m`).

Both share one machinery: validate everything that needs no model, cut each video's clips (ffmpeg only) with their
captions, then cache each model's features one model at a time (loaded only when some clip lacks its file). Every
file is written under a temporary name and renamed when complete; one that exists and loads is kept, so a re-run
(or a run after a kill) does only what is missing. A video that cannot give a clip is reported with its reason, and
the run goes on.

MusicInfuser: upstream's `preprocess.bash` (trim_and_crop_videos.py, encode_videos.py, embed_captions.py) as one run:

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

TempoTokens: upstream trains from the videos themselves (`utils/dataset.py::VideoFolderDataset`, one random window
per video and epoch, features computed in the training step); here each video gives one such window, cached. Per
video `<stem>`:
    .mp4                the training sample: num_frames source frames taken as upstream (every round(fps_src / fps)-th
                        frame from a seeded start), resized to the UNet's size (no crop, as upstream's resize), at
                        `fps`, with the num_frames / fps seconds of audio from the first frame (1 s by default)
    .txt                the prompt: `<stem>.txt` beside the video, else --caption, else the configs' `fallback_prompt`
                        "<temp> <local1> <local2> <local3> <local4> <class>"
    .latent.pt          {mean, logvar}: raw (not scaled) zeroscope VAE posterior of every frame, each
                        (1, 4, num_frames, height / 8, width / 8) fp32; training samples it and scales by 0.18215
                        every step, as upstream's `tensor_to_vae_latent` (`latent_dist.sample()`)
    .beats.pt           {features: (1, T_tok, layers x dim) fp32}: BEATs, every layer concatenated, of the sample's
                        audio at 16 kHz mono as `avtool tokens` makes it (1 s: 48 tokens, 2 per frame)

Dance2Music-Diffusion: upstream trains on the first 356 frames of each AIST++ motion and the dmae1d-ATC32-v3 latents
of its music's first 262,144 samples at 44.1 kHz (its extraction scripts are not published). Each motion file (`.pkl`
or `(N, 219)` `.npy`, anywhere under the folder) is paired with `<stem>.<audio>` beside it, else with the AIST++
music its name gives (`gBR_sBM_cAll_d04_mBR0_ch01` -> `mBR0.*` anywhere under the folder). Per window `<stem>.w{k}`
(k = 0 .. --windows - 1, consecutive windows from the start; upstream: one):
    .motion.npy         (motion_frames, 219) float32: the motion features of frames [k M, (k + 1) M)
    .wav                2^18 samples of the music from k M / 60 s, 44.1 kHz stereo float (mono is doubled)
    .dmae.pt            {latent: (1, 32, 512) fp32}: dmae1d-ATC32-v3's encoding of that .wav
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput
from avtool.media import MediaInfo, atomic_output, ensure_output_dir, frames_at, load_audio, probe, read_frames, write_video
from avtool.media.clips import CropWindow, crop_window, cut_clip
from avtool.media.motion import MOTION_FPS, MOTION_SUFFIXES, read_motion
from avtool.models.d2m import SAMPLE_RATE as D2M_SAMPLE_RATE
from avtool.models.d2m import WINDOW_SAMPLES
from avtool.pipelines.common import AUDIO_SUFFIXES, VIDEO_SUFFIXES, check_choice, check_range
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
from avtool.pipelines.tokens import MODEL_OF_FOLDER as TOKENS_MODEL_OF_FOLDER
from avtool.pipelines.tokens import (
    ZEROSCOPE_COMPONENTS,
    TokensRequest,
    TokensWeights,
    audio_window,
    beats_waveform,
    resolve_shape,
)
from avtool.runtime import check_device, check_dtype, silence_libraries
from avtool.training.d2m_config import LATENT_FILE as D2M_LATENT_FILE
from avtool.training.d2m_config import MOTION_FILE
from avtool.training.musicinfuser_config import AUDIO_FILE, BASIC_EMBED_FILE, DETAILED_EMBED_FILE, LATENT_FILE
from avtool.training.tempotokens_config import BEATS_FEATURES_FILE, FALLBACK_PROMPT
from avtool.ui import progress
from avtool.weights.layout import (
    ADAPTER_FOLDER,
    BEATS_FILE,
    BEATS_FOLDER,
    DMAE_FOLDER,
    MOCHI_FOLDER,
    WAV2VEC_FOLDER,
    ZEROSCOPE_FOLDER,
    WeightsCheck,
)

CROPS = ("center", "random")
EDGE_EXCLUDE = 0.05  # random segments start past the first 5% of the video and end before its last 5%, as upstream
BASIC_PROMPT = "a dance video"  # upstream's basic prompt for non-AIST videos, and the default caption
MAX_CLIPS_PER_MINUTE = 600.0
MAX_TOKENS_FRAMES, MAX_TOKENS_FPS, MAX_SIZE, SIZE_STEP = 1024, 240.0, 4096, 8
FILE_KEYS = {LATENT_FILE: {"mean", "logvar"}, DETAILED_EMBED_FILE: {"y_mask", "y_feat"},
             BASIC_EMBED_FILE: {"y_mask", "y_feat"}, AUDIO_FILE: {"audio_embeddings"}, BEATS_FEATURES_FILE: {"features"},
             D2M_LATENT_FILE: {"latent"}}
MAX_D2M_WINDOWS = 10_000


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
class TokensPreprocessOptions:
    """`avtool preprocess tokens` options (upstream's `train_data`: n_sample_frames 24, fps 24)."""

    num_frames: int = 24
    fps: float = 24.0  # every round(source fps / fps)-th frame is taken; the audio window is num_frames / fps seconds
    height: int | None = None  # None: `avtool tokens`' default, 384 (the tiny weights: their own size)
    width: int | None = None
    caption: str | None = None  # for videos without a `<stem>.txt` beside them; None: FALLBACK_PROMPT
    seed: int | None = None  # None: drawn, and reported in the summary
    device: str = "auto"
    dtype: str = "auto"  # the VAE's; BEATs runs in fp32

    @property
    def seconds(self) -> float:
        """The audio window: upstream's `len(idxs) / 24` s (dataset.py `process_video`), i.e. n_sample_frames / fps."""
        return self.num_frames / self.fps


@dataclass(frozen=True)
class D2MPreprocessOptions:
    """`avtool preprocess d2m` options."""

    windows: int = 1  # consecutive windows per motion from its start (upstream: 1)
    motion_frames: int = 356  # a window's motion frames (the model's MOT window; upstream: 356)
    seed: int | None = None  # nothing is random here; kept so every preprocess summary has one
    device: str = "auto"  # the autoencoder runs in fp32


@dataclass(frozen=True)
class Rejection:
    path: Path  # a source video, or a clip that failed after it was cut
    reason: str


@dataclass
class PreprocessSummary:
    """What a run did, clip by clip (a clip is named by its .mp4)."""

    out_dir: Path
    seed: int
    size: tuple[int, int] | None  # (height, width) of the clips; None: not video clips
    written: list[Path] = field(default_factory=list)  # clips with at least one file written by this run
    skipped: list[Path] = field(default_factory=list)  # clips complete before this run
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        size = {"height": self.size[0], "width": self.size[1]} if self.size else {}
        return {"out_dir": str(self.out_dir), "seed": self.seed, **size,
                "written": len(self.written), "skipped": len(self.skipped), "rejected": len(self.rejected),
                "written_clips": [str(p) for p in self.written], "skipped_clips": [str(p) for p in self.skipped],
                "rejections": [{"path": str(r.path), "reason": r.reason} for r in self.rejected]}


@dataclass(frozen=True)
class Clip:
    """One training clip of one source video, and where its files go (named by its .mp4)."""

    source: Path
    base: Path  # out_dir/<relative folder>/<stem>[.seg{k}], without a suffix

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def video(self) -> Path:
        return self.file(".mp4")


@dataclass(frozen=True)
class DanceClip(Clip):
    """A segment cut with ffmpeg."""

    start: float  # seconds into the source
    window: CropWindow  # of the source's frame


@dataclass(frozen=True)
class TokensSample(Clip):
    """Chosen source frames and the audio from the first of them."""

    frames: tuple[int, ...]  # source frame indices
    audio_start: float  # seconds into the source's audio stream


@dataclass(frozen=True)
class D2MWindowClip(Clip):
    """A motion window and the music under it; named by its .wav."""

    motion_start: int  # frame
    music: Path
    music_start: float  # seconds

    @property
    def video(self) -> Path:
        return self.file(".wav")


@dataclass(frozen=True)
class D2MPreprocessWeights:
    root: Path
    autoencoder: Path


@dataclass(frozen=True)
class PreprocessWeights:
    """The checked weight folders a preprocessing run reads (`.mochi` and `.root` as `resolve_size` reads them)."""

    root: Path
    mochi: Path
    wav2vec: Path


@dataclass
class Run:
    """What every step of one run reads, and what it records."""

    options: DancePreprocessOptions | TokensPreprocessOptions | D2MPreprocessOptions
    weights: PreprocessWeights | TokensWeights | D2MPreprocessWeights
    summary: PreprocessSummary
    quiet: bool
    model_of_folder: dict[str, str]  # for the download hint of a weights error
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
    videos = find_inputs(videos_dir, out_dir)
    weights = check_weights(weights_dir)
    run = start_run(options, weights, out_dir, resolve_size(DanceRequest(), weights), quiet, MODEL_OF_FOLDER)

    # 2. Cut the clips (ffmpeg only), then cache each model's features for the clips that lack them.
    def plan(video: Path, base: Path, rng: random.Random) -> list[Clip]:
        return plan_clips(video, base, options, rng, run.frame_size)

    clips = cut_all(videos, videos_dir, run, plan, cut_if_missing)
    return finish_run(run, clips, (cache_latents, cache_text_embeddings, cache_audio_features))


def preprocess_tokens(videos_dir: Path, out_dir: Path, options: TokensPreprocessOptions, weights_dir: Path,
                      quiet: bool = False) -> PreprocessSummary:
    """Take one TempoTokens training sample out of every video under `videos_dir` into `out_dir` and cache its
    features (see the module's note); return what was written, skipped and rejected."""
    # 1. Validate everything that needs no model.
    check_tokens_options(options)
    videos = find_inputs(videos_dir, out_dir)
    weights = check_tokens_weights(weights_dir)
    request = TokensRequest(num_frames=options.num_frames, fps=options.fps, height=options.height, width=options.width)
    shape = resolve_shape(request, weights)  # also refuses a window with fewer audio tokens than frames
    run = start_run(options, weights, out_dir, (shape.height, shape.width), quiet, TOKENS_MODEL_OF_FOLDER)

    # 2. Write the samples (decode, resize, encode), then cache each model's features for the samples that lack them.
    def plan(video: Path, base: Path, rng: random.Random) -> list[Clip]:
        return [plan_sample(video, base, options, rng)]

    samples = cut_all(videos, videos_dir, run, plan, write_sample_if_missing)
    return finish_run(run, samples, (cache_zeroscope_latents, cache_beats_features))


def preprocess_d2m(motions_dir: Path, out_dir: Path, options: D2MPreprocessOptions, weights_dir: Path,
                   quiet: bool = False) -> PreprocessSummary:
    """Cut motion windows and their music out of every motion file under `motions_dir` into `out_dir` and cache the
    music's autoencoder latents (see the module's note); return what was written, skipped and rejected."""
    # 1. Validate everything that needs no model.
    check_range("--windows", options.windows, 1, MAX_D2M_WINDOWS)
    check_range("--motion-frames", options.motion_frames, 1, MAX_D2M_WINDOWS)
    check_device(options.device)
    motions = find_inputs(motions_dir, out_dir, MOTION_SUFFIXES, "motion")
    check = WeightsCheck(weights_dir)
    for name in ("config.json", "pytorch_model.bin"):
        check.file("d2m", f"{DMAE_FOLDER}/{name}")
    check.raise_if_missing()
    weights = D2MPreprocessWeights(check.root, check.root / DMAE_FOLDER)
    run = start_run(options, weights, out_dir, None, quiet, {DMAE_FOLDER: "d2m"})
    music_index = audio_files_by_stem(motions_dir, out_dir)

    # 2. Write each window's motion and music (no model), then the music's latents where missing.
    def plan(motion: Path, base: Path, rng: random.Random) -> list[Clip]:
        return plan_d2m_windows(motion, base, options, music_index)

    windows = cut_all(motions, motions_dir, run, plan, write_d2m_window_if_missing)
    return finish_run(run, windows, (cache_dmae_latents,))


def start_run(options: DancePreprocessOptions | TokensPreprocessOptions | D2MPreprocessOptions,
              weights: PreprocessWeights | TokensWeights | D2MPreprocessWeights,
              out_dir: Path, size: tuple[int, int] | None, quiet: bool, model_of_folder: dict[str, str]) -> Run:
    """Make the output folder and draw the seed when none is given."""
    ensure_output_dir(out_dir)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    return Run(options, weights, PreprocessSummary(out_dir, seed, size), quiet, model_of_folder)


def finish_run(run: Run, clips: list[Clip], steps: tuple[Callable[[list[Clip], Run], list[Clip]], ...]) -> PreprocessSummary:
    """Run each caching step over the clips still in the run, then sort them into written and skipped."""
    for step in steps:
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
    check_caption(options.caption)
    check_device(options.device)
    check_dtype(options.dtype)


def check_tokens_options(options: TokensPreprocessOptions) -> None:
    check_range("--num-frames", options.num_frames, 1, MAX_TOKENS_FRAMES)
    check_range("--fps", options.fps, 1, MAX_TOKENS_FPS)
    for name, value in (("--height", options.height), ("--width", options.width)):
        if value is not None and (not SIZE_STEP <= value <= MAX_SIZE or value % SIZE_STEP):
            raise BadInput(f"{name} {value}: must be a multiple of {SIZE_STEP} from {SIZE_STEP} to {MAX_SIZE}")
    check_caption(options.caption)
    check_device(options.device)
    check_dtype(options.dtype)


def check_caption(caption: str | None) -> None:
    if caption is not None and not caption.strip():
        raise BadInput("--caption: must not be empty", hint="leave it out for the default caption")


def find_inputs(folder: Path, out_dir: Path, suffixes: tuple[str, ...] = VIDEO_SUFFIXES, kind: str = "video") -> list[Path]:
    """The `kind` files under `folder` (recursively, as upstream), leaving out hidden files and `out_dir`."""
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such folder", hint=f"give the folder that holds the {kind} files")
    out = out_dir.resolve()
    found = sorted(path for path in folder.rglob("*") if path.suffix.lower() in suffixes and path.is_file()
                   and not path.name.startswith(".") and not path.resolve().is_relative_to(out))
    if not found:
        raise BadInput(f"{folder}: no {kind} files ({', '.join(suffixes)}) in it")
    return found


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


def check_tokens_weights(weights_dir: Path) -> TokensWeights:
    """Check the files of the models preprocessing loads: zeroscope's VAE (and its UNet's config, for the size), BEATs."""
    check = WeightsCheck(weights_dir)
    check.pipeline("tempotokens", ZEROSCOPE_FOLDER, {"vae": ZEROSCOPE_COMPONENTS["vae"]})
    check.file("tempotokens", f"{ZEROSCOPE_FOLDER}/unet/config.json")
    beats = check.file("tempotokens", f"{BEATS_FOLDER}/{BEATS_FILE}")
    check.raise_if_missing()
    return TokensWeights(check.root, check.root / ZEROSCOPE_FOLDER, beats, mapper=Path(), files=check.files)


def clip_seconds(num_frames: int) -> float:
    """A clip's length: num_frames/30 + 0.09 s to one decimal, as upstream's `printf "%.1f"` (2.5 s for 73 frames)."""
    return round(num_frames / MODEL_FPS + EXCERPT_PAD_SECONDS, 1)


# --------------------------------------------------------------------------------------------------------------
# Clips


Planner = Callable[[Path, Path, random.Random], list[Clip]]  # (video, clip base, its rng) -> its clips; BadInput: why none


def cut_all(videos: list[Path], videos_dir: Path, run: Run, plan: Planner, make: Callable[[Clip, Run], None]) -> list[Clip]:
    """Every video's clips (`plan`), made where missing (`make`), each with its caption; videos that cannot give one
    are rejected."""
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
                planned = plan(video, base, rng)
            except (BadInput, RuntimeError) as error:  # RuntimeError: ffmpeg failed on this video
                run.summary.rejected.append(Rejection(video, reason_of(error, video)))
                planned = []
            for clip in planned:
                try:
                    make(clip, run)
                    clips.append(clip)
                except (BadInput, RuntimeError) as error:
                    run.summary.rejected.append(Rejection(clip.video, reason_of(error, clip.source)))
            bar.advance(task)
    return clips


def plan_clips(video: Path, base: Path, options: DancePreprocessOptions, rng: random.Random,
               size: tuple[int, int]) -> list[DanceClip]:
    """The video's segments, for clips of `size` (width, height); BadInput (its reason) when it cannot give one."""
    info = probe_with_audio(video)
    if info.video.width < size[0] or info.video.height < size[1]:
        raise BadInput(f"{info.video.width}x{info.video.height} is smaller than the clip size {size[0]}x{size[1]}")
    duration = min(info.video.duration, info.audio.start + info.audio.duration)
    seconds = clip_seconds(options.num_frames)
    if duration < seconds:
        raise BadInput(f"too short for one clip: {duration:.2f} s, a clip of {options.num_frames} frames needs {seconds:g} s")
    starts = segment_starts(duration, seconds, options, rng)
    window = crop_window((info.video.width, info.video.height), size)
    return [DanceClip(video, base.with_name(f"{base.name}.seg{k}"), start, window) for k, start in enumerate(starts)]


def probe_with_audio(video: Path) -> MediaInfo:
    """The video's streams; BadInput (the reason) without a video or an audio track."""
    info = probe(video)
    if info.video is None or info.video.num_frames == 0:
        raise BadInput("no video track")
    if info.audio is None:
        raise BadInput("no audio track")
    return info


def segment_starts(duration: float, seconds: float, options: DancePreprocessOptions, rng: random.Random) -> list[float]:
    """Upstream's segments: ceil(minutes x clips_per_minute) uniform random starts with the ends excluded, or one
    centred clip (`--crop center`, and videos too short for the exclusion, which upstream skipped by mistake)."""
    first, last = duration * EDGE_EXCLUDE, duration * (1 - EDGE_EXCLUDE) - seconds
    if options.crop == "center" or last <= first:
        return [(duration - seconds) / 2]
    return [rng.uniform(first, last) for _ in range(math.ceil(duration / 60 * options.clips_per_minute))]


def plan_sample(video: Path, base: Path, options: TokensPreprocessOptions, rng: random.Random) -> TokensSample:
    """Upstream's training window (`VideoFolderDataset.get_frame_batch`): every n-th frame, n = round(source fps /
    fps), num_frames of them from a random start, and the audio from the first frame on; BadInput (the reason) when
    the video cannot give it."""
    info = probe_with_audio(video)
    source, sound = info.video, info.audio
    every_nth = min(max(1, round(source.fps / options.fps + 1e-5)), source.num_frames)
    # Upstream quirk kept for parity: the start is drawn in units of every_nth frames, but the range subtracts
    # num_frames * every_nth (and 5) from the length in those units; where that is negative, it starts 1 s in.
    high = source.num_frames // every_nth - options.num_frames * every_nth - 5
    first = rng.randint(0, high) if high >= 0 else int(source.fps)
    frames = tuple(every_nth * (first + k) for k in range(options.num_frames))
    if frames[-1] >= source.num_frames:
        raise BadInput(f"too short: {source.num_frames} frames at {source.fps:g} fps, {options.num_frames} frames "
                       f"every {every_nth} from frame {first * every_nth} need {frames[-1] + 1}")
    audio_start = frames[0] / source.fps - sound.start
    if audio_start < 0 or audio_start + options.seconds > sound.duration + 1e-3:
        raise BadInput(f"its audio ({sound.start:.2f}-{sound.start + sound.duration:.2f} s) does not cover the window "
                       f"{frames[0] / source.fps:.2f}-{frames[0] / source.fps + options.seconds:.2f} s")
    return TokensSample(video, base, frames, audio_start)


def cut_if_missing(clip: DanceClip, run: Run) -> None:
    """Cut the clip (dropping any features of an earlier cut) and write its caption unless they exist; BadInput when
    the cut comes out too short."""
    num_frames = run.options.num_frames
    if not clip_is_valid(clip.video, num_frames, run.frame_size):
        drop_features(clip)
        cut_clip(clip.source, clip.video, clip.start, clip_seconds(num_frames), clip.window, run.frame_size, MODEL_FPS)
        run.touched.add(clip.video)
        if not clip_is_valid(clip.video, num_frames, run.frame_size):
            clip.video.unlink()
            raise BadInput(f"its clip from {clip.start:.2f} s has fewer than {num_frames} frames or no audio")
    write_caption_if_missing(clip, run, BASIC_PROMPT)


def write_sample_if_missing(sample: TokensSample, run: Run) -> None:
    """Write the sample's mp4 (dropping any features of an earlier one) and its caption unless they exist."""
    options = run.options
    if not clip_is_valid(sample.video, options.num_frames, run.frame_size):
        drop_features(sample)
        batches = list(frames_at(sample.source, sample.frames, run.frame_size))
        if sum(map(len, batches)) < options.num_frames:
            raise BadInput(f"only {sum(map(len, batches))} of its {options.num_frames} frames decode")
        samples, rate = audio_window(sample.source, probe(sample.source).require_audio(), sample.audio_start, options.seconds)
        write_video(batches, options.fps, sample.video, audio=samples, sample_rate=rate)
        run.touched.add(sample.video)
    write_caption_if_missing(sample, run, FALLBACK_PROMPT)


def audio_files_by_stem(folder: Path, out_dir: Path) -> dict[str, Path]:
    """Every audio file under `folder` (outside `out_dir`) by its stem: where AIST++ music ids (`mBR0`) are found."""
    out = out_dir.resolve()
    return {path.stem: path for path in sorted(folder.rglob("*"), reverse=True)
            if path.suffix.lower() in AUDIO_SUFFIXES and path.suffix.lower() not in VIDEO_SUFFIXES and path.is_file()
            and not path.resolve().is_relative_to(out)}


def music_of(motion: Path, music_index: dict[str, Path]) -> Path:
    """`<stem>.<audio>` beside the motion, else the AIST++ music its name gives (`..._mBR0_...` -> mBR0.*)."""
    beside = next((path for suffix in AUDIO_SUFFIXES if (path := motion.with_suffix(suffix)).is_file()), None)
    if beside is not None:
        return beside
    music_id = next((part for part in motion.stem.split("_") if len(part) == 4 and part[0] == "m" and part[3].isdigit()), None)
    if music_id in music_index:
        return music_index[music_id]
    named = f" nor the AIST++ music {music_id}.*" if music_id else ""
    raise BadInput(f"no music: neither {motion.stem}.wav (or another audio file) beside it{named} in the folder")


def plan_d2m_windows(motion: Path, base: Path, options: D2MPreprocessOptions, music_index: dict[str, Path]) -> list[D2MWindowClip]:
    """The motion's consecutive windows from its start, as many as motion and music both cover (at most
    --windows); BadInput (its reason) when not even one."""
    frames = len(read_motion(motion, min_frames=options.motion_frames))
    music = music_of(motion, music_index)
    sound = probe(music).require_audio()
    seconds = WINDOW_SAMPLES / D2M_SAMPLE_RATE
    windows = []
    for k in range(options.windows):
        start = k * options.motion_frames
        music_start = start / MOTION_FPS
        if start + options.motion_frames > frames or music_start + seconds > sound.duration + 1e-3:
            break
        windows.append(D2MWindowClip(motion, base.with_name(f"{base.name}.w{k}"), start, music, music_start))
    if not windows:
        raise BadInput(f"its music {music} lasts {sound.duration:.2f} s, shorter than one window ({seconds:.2f} s)")
    return windows


def write_d2m_window_if_missing(window: D2MWindowClip, run: Run) -> None:
    """The window's motion features and music (2^18 samples, stereo, 44.1 kHz) unless they are there and whole."""
    frames = run.options.motion_frames
    motion_file = window.file(MOTION_FILE)
    if not motion_is_valid(motion_file, frames):
        drop_features(window)
        motion = read_motion(window.source)[window.motion_start : window.motion_start + frames]
        with atomic_output(motion_file) as tmp, tmp.open("wb") as file:
            np.save(file, motion)
        run.touched.add(window.video)
    if not music_is_valid(window.video):
        drop_features(window)
        samples, _ = load_audio(window.music, sr=D2M_SAMPLE_RATE, mono=False, start=window.music_start,
                                duration=WINDOW_SAMPLES / D2M_SAMPLE_RATE + 0.05)
        if samples.shape[1] < WINDOW_SAMPLES:
            raise BadInput(f"its music from {window.music_start:.2f} s gives {samples.shape[1]} of {WINDOW_SAMPLES} samples")
        stereo = np.repeat(samples, 2, axis=0) if len(samples) == 1 else samples[:2]
        write_float_wav(window.video, stereo[:, :WINDOW_SAMPLES].T)
        run.touched.add(window.video)


def write_float_wav(path: Path, samples: np.ndarray) -> None:
    """(samples, channels) as a 32-bit float WAV at D2M's rate, atomically: the latents are encoded from its exact bits."""
    import soundfile

    with atomic_output(path) as tmp:
        soundfile.write(tmp, samples, D2M_SAMPLE_RATE, subtype="FLOAT", format="WAV")


def motion_is_valid(path: Path, frames: int) -> bool:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r").shape == (frames, 219)
    except (OSError, ValueError, EOFError):
        return False


def music_is_valid(path: Path) -> bool:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        return False
    return info.frames == WINDOW_SAMPLES and info.channels == 2 and info.samplerate == D2M_SAMPLE_RATE


def drop_features(clip: Clip) -> None:
    """Delete a clip's cached features: those of an earlier cut describe other frames."""
    for suffix in FILE_KEYS:
        clip.file(suffix).unlink(missing_ok=True)


def clip_is_valid(path: Path, num_frames: int, size: tuple[int, int]) -> bool:
    """Whether a clip is there, readable, with audio and at least `num_frames` frames of `size` (width, height)."""
    if not path.is_file():
        return False
    try:
        info = probe(path)
    except BadInput:
        return False
    return (info.audio is not None and info.video is not None and info.video.num_frames >= num_frames
            and (info.video.width, info.video.height) == size)


def write_caption_if_missing(clip: Clip, run: Run, default: str) -> None:
    """`<stem>.txt` beside the source video when it holds text, else --caption, else `default`."""
    if clip.file(".txt").is_file():
        return
    beside = clip.source.with_suffix(".txt")
    text = beside.read_text(errors="replace").strip() if beside.is_file() else ""
    write_text(clip.file(".txt"), text or run.options.caption or default)
    run.touched.add(clip.video)


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
    """Mochi's video VAE on each clip's first num_frames frames: {mean, logvar} of (1, 12, T', h, w)."""
    return cache_vae_latents(clips, run, "AutoencoderKLMochi", run.weights.mochi / "vae", per_frame=False)


def cache_zeroscope_latents(samples: list[Clip], run: Run) -> list[Clip]:
    """zeroscope's (2D) VAE on every frame of the sample, laid out (1, 4, F, h, w) as upstream's `tensor_to_vae_latent`."""
    return cache_vae_latents(samples, run, "AutoencoderKL", run.weights.zeroscope / "vae", per_frame=True)


def cache_vae_latents(clips: list[Clip], run: Run, vae_class: str, vae_folder: Path, per_frame: bool) -> list[Clip]:
    """The VAE posterior of each clip's first num_frames frames, encoded as one video or (`per_frame`) frame by frame."""
    def load() -> Writer:
        import diffusers
        import torch

        from avtool.runtime import resolve_device, resolve_dtype
        from avtool.weights.loading import load_pretrained

        device = resolve_device(run.options.device)
        dtype = resolve_dtype(run.options.dtype, device)
        vae = load_pretrained(getattr(diffusers, vae_class), vae_folder, torch_dtype=dtype).to(device).eval()
        num_frames = run.options.num_frames

        def write(clip: Clip) -> None:
            frames = read_frames(clip.video, num_frames=num_frames)
            if len(frames) < num_frames:
                raise BadInput(f"{clip.video}: fewer than {num_frames} frames")
            pixels = torch.from_numpy(frames).to(device, dtype) / 127.5 - 1  # (F, H, W, 3)
            if per_frame:
                posterior = vae_posterior(vae, pixels.permute(0, 3, 1, 2))  # (F, C, h, w) each
                mean, logvar = (part.permute(1, 0, 2, 3)[None].contiguous() for part in posterior)
            else:
                mean, logvar = vae_posterior(vae, pixels.permute(3, 0, 1, 2)[None])
            save(clip.file(LATENT_FILE), {"mean": mean, "logvar": logvar})
        return write

    return cache(clips, [LATENT_FILE], "VAE latents", load, run)


def vae_posterior(vae, pixels):
    """The VAE encoder's mean and log-variance as fp32 on the CPU: (1, 12, T', h, w) from Mochi's, (F, 4, h, w)
    from zeroscope's 2D VAE.

    Read from the posterior's parameters rather than `latent_dist.logvar`, which diffusers clamps to [-30, 20]:
    upstream's (Mochi) encoder stores them unclamped.
    """
    import torch

    with torch.inference_mode():
        parameters = vae.encode(pixels).latent_dist.parameters.float().cpu()
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


def cache_beats_features(samples: list[Clip], run: Run) -> list[Clip]:
    """BEATs (every layer) on the sample's audio at 16 kHz mono, through `avtool tokens`' path."""
    def load() -> Writer:
        import torch

        from avtool.models.beats import load_beats
        from avtool.runtime import resolve_device
        from avtool.weights.loading import load_checkpoint

        device = resolve_device(run.options.device)
        beats = load_beats(load_checkpoint(run.weights.beats), str(run.weights.beats)).to(device).eval()

        def write(sample: Clip) -> None:
            samples, rate = audio_window(sample.video, probe(sample.video).require_audio(), 0, run.options.seconds)
            with torch.inference_mode():
                features = beats.extract_layer_features(torch.from_numpy(beats_waveform(samples, rate))[None].to(device))
            save(sample.file(BEATS_FEATURES_FILE), {"features": features.float().cpu()})
        return write

    return cache(samples, [BEATS_FEATURES_FILE], "BEATs features", load, run)


def cache_dmae_latents(windows: list[Clip], run: Run) -> list[Clip]:
    """dmae1d-ATC32-v3's encoder on each window's music: {latent: (1, 32, 512)} fp32."""
    def load() -> Writer:
        import soundfile
        import torch

        from avtool.models.d2m.autoencoder import load_dmae
        from avtool.runtime import resolve_device

        device = resolve_device(run.options.device)
        autoencoder = load_dmae(run.weights.autoencoder, device, torch.float32)

        def write(window: Clip) -> None:
            samples, _ = soundfile.read(str(window.video), dtype="float32", always_2d=True)
            with torch.inference_mode():
                latent = autoencoder.encode(torch.from_numpy(samples.T.copy())[None].to(device))
            save(window.file(D2M_LATENT_FILE), {"latent": latent.float().cpu()})
        return write

    return cache(windows, [D2M_LATENT_FILE], "autoencoder latents", load, run)


def cache(clips: list[Clip], suffixes: list[str], label: str, load: Callable[[], Writer], run: Run) -> list[Clip]:
    """Write the `suffixes` files of the clips lacking one, loading the model (`load`) first if any does; a clip
    whose file cannot be made is rejected with the reason. Returns the clips still in the run."""
    from avtool.weights.loading import weights_hint

    missing = [clip for clip in clips if not all(loads(clip.file(suffix)) for suffix in suffixes)]
    if not missing:
        return clips
    silence_libraries()
    with weights_hint(run.weights.root, run.model_of_folder):
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
