"""What a Dance2Music-Diffusion training run reads, checked before torch loads: `configs/d2m.yaml` as dataclasses,
and the windows `avtool preprocess d2m` wrote. No torch here.

Upstream (`train_con_116_latent_unet_MOT_origendata_219prompt.py`) has no config file; its settings are this file's
defaults: batch 6, the U-Net's AdamW (lr 1e-4, betas 0.95/0.99, weight decay 1e-3, eps 1e-6), MOT's AdamW (lr 1e-3,
betas 0.5/0.9, torch's other defaults), both halved every 30 epochs (StepLR), the diffusion loss weighted 0.1 beside
the genre cross-entropy, and whole samples' motion tokens masked for guidance with probability 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avtool.errors import BadInput
from avtool.models.d2m import GENRES, LATENT_CHANNELS
from avtool.models.d2m.config import MOTConfig, UNetConfig
from avtool.training.config import OptimizerConfig, TrainingConfig

# The files of a window `<stem>.w<k>`, as `avtool preprocess d2m` names them.
MOTION_FILE, LATENT_FILE, MUSIC_FILE = ".motion.npy", ".dmae.pt", ".wav"
PREPROCESS_HINT = "run `avtool preprocess d2m AISTPP_DIR -o FOLDER` and set data to FOLDER"


@dataclass(frozen=True)
class D2MModelSizes:
    """Overrides of the model sizes (MOTConfig / UNetConfig field names); empty: upstream's."""

    mot: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)

    def configs(self) -> tuple[MOTConfig, UNetConfig]:
        try:
            mot, unet = MOTConfig(**self.mot), UNetConfig(**self.unet)
        except (TypeError, ValueError) as error:
            raise BadInput(f"model: {error}", hint="model.mot takes MOTConfig's fields, model.unet UNetConfig's") from None
        if unet.in_channels != LATENT_CHANNELS or unet.embedding_features != mot.dim:
            raise BadInput(f"model.unet: in_channels must be {LATENT_CHANNELS} (the autoencoder's latent) and "
                           f"embedding_features {mot.dim} (MOT's width)")
        return mot, unet


@dataclass(frozen=True)
class D2MTrainConfig:
    """`configs/d2m.yaml`."""

    data: str = "data/d2m"  # the folder `avtool preprocess d2m -o` wrote
    checkpoint_dir: str = "outputs/d2m"  # the run folder: checkpoints, metrics.jsonl and the trained D2M's files
    seed: int = 42
    batch_size: int = 6
    num_steps: int = 100000
    save_interval: int = 1000
    keep_checkpoints: int = 2
    lr_step_epochs: int = 30
    lr_gamma: float = 0.5
    diffusion_loss_weight: float = 0.1
    embedding_mask_proba: float = 0.2
    mixed_precision: str = "bf16"  # the U-Net's autocast on a GPU (upstream: fp16 AMP with a grad scaler); "no": fp32
    unet_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, weight_decay=1e-3, betas=(0.95, 0.99), eps=1e-6))
    mot_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, weight_decay=1e-2, betas=(0.5, 0.9), eps=1e-8))
    model: D2MModelSizes = field(default_factory=D2MModelSizes)

    def __post_init__(self) -> None:
        if not 0 <= self.embedding_mask_proba <= 1:
            raise BadInput(f"embedding_mask_proba: must be from 0 to 1, got {self.embedding_mask_proba}")
        if self.lr_step_epochs < 1 or not 0 < self.lr_gamma <= 1:
            raise BadInput("lr_step_epochs must be at least 1 and lr_gamma from 0 (excluded) to 1")
        if self.mixed_precision not in ("no", "bf16"):
            raise BadInput(f"mixed_precision {self.mixed_precision!r}: expected no or bf16",
                           hint="fp16 (upstream's) needs a grad scaler, which the shared loop does not run")
        if self.diffusion_loss_weight <= 0:
            raise BadInput(f"diffusion_loss_weight: must be positive, got {self.diffusion_loss_weight}")
        _ = self.training, self.model.configs()  # their own checks, now rather than in the loop

    @property
    def optimizer(self) -> OptimizerConfig:
        """The loop's defaults: the U-Net's (MOT's group brings its own, see `Task.optimizer_groups`)."""
        return self.unet_optimizer

    @property
    def training(self) -> TrainingConfig:
        return TrainingConfig(num_steps=self.num_steps, warmup_steps=0, save_interval=self.save_interval, batch_size=self.batch_size,
                              keep_checkpoints=self.keep_checkpoints, lr_schedule="step", lr_step_epochs=self.lr_step_epochs,
                              lr_gamma=self.lr_gamma)


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Window:
    """One preprocessed window: `base` is `<folder>/<stem>.w<k>`; its genre comes from the AIST++ name prefix."""

    base: Path
    genre: int

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)


def genre_of(name: str) -> int | None:
    """The AIST++ genre index of a file name (`gBR_sBM_cAll_d04_mBR0_ch01` -> 3), None for another name."""
    prefix = name.split("_")[0]
    return GENRES.index(prefix) if prefix in GENRES else None


def training_windows(config: D2MTrainConfig) -> list[Window]:
    """The complete windows of `data` (motion and latent files), sorted; BadInput for none or a name without genre."""
    folder = Path(config.data)
    if not folder.is_dir():
        raise BadInput(f"data {folder}: no such folder", hint=PREPROCESS_HINT)
    bases = sorted(path.with_name(path.name.removesuffix(LATENT_FILE)) for path in folder.rglob(f"*{LATENT_FILE}"))
    windows = []
    for base in bases:
        if not base.with_name(base.name + MOTION_FILE).is_file():
            continue
        genre = genre_of(base.name)
        if genre is None:
            raise BadInput(f"{base}: the genre comes from an AIST++ name prefix ({', '.join(GENRES)}), this one has none",
                           hint="name the motion files as AIST++ does, e.g. gBR_sBM_cAll_d04_mBR0_ch01.pkl")
        windows.append(Window(base, genre))
    if not windows:
        raise BadInput(f"data {folder}: no preprocessed window (a {LATENT_FILE} with its {MOTION_FILE})", hint=PREPROCESS_HINT)
    frames = MOTConfig(**config.model.mot).num_frames
    shape = np.load(windows[0].file(MOTION_FILE), mmap_mode="r").shape
    if shape[0] != frames:
        raise BadInput(f"{windows[0].file(MOTION_FILE)}: {shape[0]} motion frames, the model's window is {frames}",
                       hint=f"preprocess with the model's window, or set model.mot.num_frames to {shape[0]}")
    return windows


def check_inputs(config: D2MTrainConfig, weights_dir: Path) -> list[Window]:
    """The windows, checked before torch loads. Training reads no weights: `avtool preprocess d2m` encoded the music."""
    return training_windows(config)


CONFIG = D2MTrainConfig  # what `avtool.pipelines.train` reads a config file into
