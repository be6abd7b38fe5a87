"""What a MusicInfuser training run reads, checked before torch loads: upstream's `configs/music_infuser.yaml` keys
as dataclasses, and the preprocessed clips (`avtool preprocess dance`) that make the dataset. No torch here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avtool.errors import BadInput
from avtool.training.config import TrainConfig, TrainingConfig
from avtool.weights.layout import MOCHI_FOLDER, WeightsCheck

# The cached files of a clip `<stem>.seg{k}`, as `avtool preprocess dance` (and upstream's preprocess.bash) names them.
LATENT_FILE, DETAILED_EMBED_FILE, BASIC_EMBED_FILE, AUDIO_FILE = ".latent.pt", ".embed_.pt", ".embed.pt", ".audio_wav2vec.pt"
CLIP_FILES = (LATENT_FILE, DETAILED_EMBED_FILE, BASIC_EMBED_FILE, AUDIO_FILE)
# AIST++ video names, e.g. gBR_sBM_c01_d04_mBR0_ch01: genre, situation, camera, dancer, music, choreography.
AIST_NAME = re.compile(r"g[A-Z]{2}_s[A-Z]{2}_c\d{2}_d\d{2}_m[A-Z]{2}\d_ch\d{2}")
AIST_TRAIN_CAMERAS = ("c01", "c10")  # front and moving-front views (upstream dataset.py)
AIST_TEST_MUSIC = ("mLH4", "mKR2", "mBR0", "mLO2", "mJB5", "mWA0", "mJS3", "mMH3", "mHO5", "mPO1")
MODEL_DTYPES = ("bf16", "fp16", "fp32")


# --------------------------------------------------------------------------------------------------------------
# Config: upstream's `configs/music_infuser.yaml` keys


@dataclass(frozen=True)
class LoraKwargs:
    """`model.kwargs`: genmo's LoRA settings, written verbatim as the adapter's `kwargs` metadata."""

    qkv_proj_lora_rank: int = 64  # on qkv_x and qkv_y (diffusers: to_q/k/v, add_q/k/v_proj)
    qkv_proj_lora_alpha: int = 64
    qkv_proj_lora_dropout: float = 0.0
    out_proj_lora_rank: int = 64  # on proj_x and proj_y (diffusers: to_out.0, to_add_out)
    out_proj_lora_alpha: int = 64
    out_proj_lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("qkv_proj_lora_rank", "out_proj_lora_rank"):
            if getattr(self, name) < 1:
                raise BadInput(f"model.kwargs.{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("qkv_proj_lora_dropout", "out_proj_lora_dropout"):
            if getattr(self, name) != 0:
                raise BadInput(f"model.kwargs.{name}: only 0 is supported (upstream trains without LoRA dropout)")


@dataclass(frozen=True)
class ModelConfig:
    type: str = "lora+audio"  # the only kind upstream's MusicInfuser trains
    kwargs: LoraKwargs = field(default_factory=LoraKwargs)

    def __post_init__(self) -> None:
        if self.type != "lora+audio":
            raise BadInput(f"model.type {self.type!r}: only 'lora+audio' is supported")


@dataclass(frozen=True)
class MusicInfuserTrainingConfig(TrainingConfig):
    model_dtype: str = "bf16"  # the run dtype on a GPU (fp32 on the CPU); the adapter file is written in it
    caption_dropout: float = 0.1
    # Upstream checkpoints the qkv and the feed-forward parts of the first N blocks; diffusers' Mochi block has no
    # such split points, so the first max(num_qkv_checkpoint, num_ff_checkpoint) blocks are checkpointed whole.
    num_qkv_checkpoint: int = 48
    num_ff_checkpoint: int = 48
    num_post_attn_checkpoint: int = 48  # accepted; upstream's train.py never passes it on, so it has no effect
    save_safetensors: bool = True  # the adapter is always a safetensors file

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_dtype not in MODEL_DTYPES:
            raise BadInput(f"training.model_dtype {self.model_dtype!r}: expected one of {', '.join(MODEL_DTYPES)}")
        if not 0 <= self.caption_dropout <= 1:
            raise BadInput(f"training.caption_dropout: must be from 0 to 1, got {self.caption_dropout}")
        for name in ("num_qkv_checkpoint", "num_ff_checkpoint", "num_post_attn_checkpoint"):
            if getattr(self, name) < 0:
                raise BadInput(f"training.{name}: must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class MusicInfuserConfig(TrainConfig):
    """`configs/music_infuser.yaml`. Keys upstream has but avtool does not need are accepted and have no effect:
    `init_checkpoint_path` (the base DiT comes from --weights-dir), `attention_mode` (always torch SDPA), `wandb`
    (the loss goes to the run's metrics.jsonl), `sample` (no sampling while training; upstream's interval is off)."""

    train_data_dir: str = "videos_preprocessed_aist_73"
    checkpoint_dir: str = "finetunes/music_infuser"  # the run folder when none is given
    train_data_dir_2: str | None = None  # upstream's optional "in-the-wild" clips, mixed in at the ratio below
    train_data_dir_2_ratio: float = 0.0
    single_video_mode: bool = False  # train on the first clip only
    audio_mode: str = "cross_attn"
    audio_cross_attn_layers: tuple[int, ...] | None = None  # None: upstream's 16 layers (AUDIO_CROSS_ATTN_LAYERS)
    # avtool's option: each video token attends to the audio within this many latent frames only (None: upstream's
    # attention to the whole clip; see MusicInfuserTransformer); kept in the adapter file's metadata for `dance`
    audio_attention_window: int | None = None
    basic_prompt_ratio: float = 0.2
    beta_beta: float | None = 3.0  # None: sigma ~ Uniform(0, 1)
    beta_half: float = 200.0
    init_checkpoint_path: str | None = None
    attention_mode: str = "sdpa"
    wandb: dict | None = None
    sample: dict | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    training: MusicInfuserTrainingConfig = field(default_factory=MusicInfuserTrainingConfig)

    def __post_init__(self) -> None:
        if self.audio_mode != "cross_attn":
            raise BadInput(f"audio_mode {self.audio_mode!r}: only 'cross_attn' is supported")
        for name in ("basic_prompt_ratio", "train_data_dir_2_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise BadInput(f"{name}: must be from 0 to 1, got {getattr(self, name)}")
        if self.audio_attention_window is not None and self.audio_attention_window < 0:
            raise BadInput(f"audio_attention_window: must be 0 or more latent frames, got {self.audio_attention_window}")
        if self.beta_beta is not None and self.beta_beta < 1:
            raise BadInput(f"beta_beta: must be at least 1, got {self.beta_beta}")
        if self.beta_half <= 0:
            raise BadInput(f"beta_half: must be positive, got {self.beta_half}")


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ClipFiles:
    """One preprocessed clip: `base` is `<folder>/<stem>.seg{k}`, its files are `base` + a suffix of CLIP_FILES."""

    base: Path

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def complete(self) -> bool:
        return all(self.file(suffix).is_file() for suffix in CLIP_FILES)


def find_clips(folder: Path) -> list[ClipFiles]:
    """The complete clips in `folder` (sorted, as upstream's glob of *.mp4 without the .recon.mp4 files)."""
    videos = sorted(path for path in folder.glob("*.mp4") if not path.name.endswith(".recon.mp4"))
    return [clip for clip in (ClipFiles(video.with_suffix("")) for video in videos) if clip.complete]


def is_aist_training_clip(clip: ClipFiles) -> bool:
    """Upstream's AIST filter (training cameras, no held-out music), for AIST-named clips only; other names pass."""
    if not AIST_NAME.match(clip.base.name):
        return True
    parts = clip.base.name.split("_")
    return parts[2] in AIST_TRAIN_CAMERAS and parts[-2] not in AIST_TEST_MUSIC


def training_clips(config: MusicInfuserConfig) -> list[ClipFiles]:
    """The dataset: the complete clips of `train_data_dir` (AIST names filtered as upstream), the first only in
    single_video_mode, plus ceil(n x train_data_dir_2_ratio) clips of `train_data_dir_2` drawn with the seed."""
    folder = Path(config.train_data_dir)
    if not folder.is_dir():
        raise BadInput(f"train_data_dir {folder}: no such folder", hint="run `avtool preprocess dance VIDEOS -o FOLDER` first")
    clips = [clip for clip in find_clips(folder) if is_aist_training_clip(clip)]
    if not clips:
        raise BadInput(f"train_data_dir {folder}: no complete preprocessed clip (an .mp4 with "
                       f"{', '.join(CLIP_FILES)})", hint="run `avtool preprocess dance VIDEOS -o FOLDER` first")
    if config.single_video_mode:
        clips = clips[:1]
    extra = math.ceil(len(clips) * config.train_data_dir_2_ratio)
    if config.train_data_dir_2 and extra:
        pool = find_clips(Path(config.train_data_dir_2))
        chosen = np.random.default_rng(config.seed).choice(len(pool), size=min(extra, len(pool)), replace=False)
        clips += [pool[i] for i in sorted(chosen)]
    return clips


def check_inputs(config: MusicInfuserConfig, weights_dir: Path) -> list[Path]:
    """Check the data and the base DiT's files before anything loads; the transformer's files."""
    training_clips(config)
    check = WeightsCheck(weights_dir)
    files = check.pretrained(MOCHI_FOLDER, f"{MOCHI_FOLDER}/transformer", "MochiTransformer3DModel", "diffusers")
    check.raise_if_missing()
    return files


CONFIG = MusicInfuserConfig  # what `avtool.pipelines.train` reads a config file into
