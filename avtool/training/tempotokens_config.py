"""What a TempoTokens training run reads, checked before torch loads: upstream's `configs/v2/*.yaml` keys (the
arguments of its `train.py::main`) as dataclasses, and the samples `avtool preprocess tokens` wrote. No torch here.

Upstream's keys are flat; the shared loop reads `seed`, `optimizer` and `training`, which are derived here:

    optimizer.lr = embedder_learning_rate    optimizer.weight_decay = adam_weight_decay
    optimizer.betas = (adam_beta1, adam_beta2), optimizer.eps = adam_epsilon
    training.num_steps = max_train_steps     training.save_interval = checkpointing_steps
    training.batch_size = train_batch_size   training.warmup_steps / min_lr_factor from lr_scheduler, lr_warmup_steps
    the run folder = output_dir (upstream: output_dir/<run_name>)

Keys accepted without effect, because avtool trains the mapper alone on preprocessed samples: the UNet / text
encoder / LoRA settings (`learning_rate`, `lora_learning_rate`, `scale_lr` (upstream scales only `learning_rate`),
`extra_*_params`, `unet_lora_modules`, `text_encoder_lora_modules`, `lora_rank`, `lora_path`,
`trainable_text_modules`), `max_grad_norm` (upstream clips only the frozen UNet's gradients, never the mapper's),
`text_encoder_gradient_checkpointing` (upstream then runs the text encoder in eval mode, where transformers does not
checkpoint), `pretrained_model_path` (zeroscope comes from --weights-dir), `validation_steps` and `validation_data`
(no sampling while training), `resume_from_checkpoint` (use --resume), the attention switches (always torch SDPA),
`extend_dataset`, `cache_latents` / `cached_latent_dir` (the samples are always cached), and in `train_data` the
keys of the other dataset types and those `avtool preprocess tokens` applied (size, fps, bucketing). Keys that would
train something else (`train_text_encoder`, `use_unet_lora`, `use_text_lora`, `trainable_modules`) or need what the
loop lacks (`gradient_accumulation_steps` > 1, `use_8bit_adam`) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avtool.errors import BadInput
from avtool.training.config import OptimizerConfig, TrainingConfig
from avtool.training.musicinfuser_config import LATENT_FILE  # one name for both tasks' cached VAE posteriors
from avtool.weights.layout import ZEROSCOPE_FOLDER, WeightsCheck

# The files of a sample `<stem>`, as `avtool preprocess tokens` names them.
BEATS_FEATURES_FILE, PROMPT_FILE = ".beats.pt", ".txt"
SAMPLE_FILES = (LATENT_FILE, BEATS_FEATURES_FILE, PROMPT_FILE)
FALLBACK_PROMPT = "<temp> <local1> <local2> <local3> <local4> <class>"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
PREPROCESS_HINT = "run `avtool preprocess tokens VIDEOS -o FOLDER` and set train_data.path to FOLDER"


@dataclass(frozen=True)
class TrainData:
    """`train_data`: only `path`, `n_sample_frames`, `fallback_prompt` and `repeat` act here (see the module's note)."""

    path: str = "./data"  # the folder `avtool preprocess tokens -o` wrote
    n_sample_frames: int = 24  # checked against the samples' frame count
    fallback_prompt: str = FALLBACK_PROMPT  # for samples without a prompt file
    repeat: int = 1  # the samples are listed this many times per epoch
    width: int = 384
    height: int = 384
    use_bucketing: bool = True
    sample_start_idx: int = 1
    fps: int = 24
    frame_step: int = 5
    single_video_path: str = ""
    single_video_prompt: str = ""
    dataset_name: str = ""  # upstream filters by datasets/<name>.csv; here the folder is the dataset
    json_path: str = ""
    image_dir: str = ""
    single_img_prompt: str = ""

    def __post_init__(self) -> None:
        for name in ("n_sample_frames", "repeat"):
            if getattr(self, name) < 1:
                raise BadInput(f"train_data.{name}: must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ValidationData:
    """`validation_data`: accepted, no effect (no sampling while training; run `avtool tokens` on the result)."""

    prompt: str = ""
    sample_preview: bool = True
    num_frames: int = 24
    width: int = 384
    height: int = 384
    num_inference_steps: int = 25
    guidance_scale: float = 25.0


@dataclass(frozen=True)
class TempoTokensConfig:
    """`configs/tempotokens/*.yaml` (upstream `configs/v2/*.yaml`); defaults are those of upstream's `main()`."""

    pretrained_model_path: str = "cerspense/zeroscope_v2_576w"
    output_dir: str = "./outputs"
    train_data: TrainData = field(default_factory=TrainData)
    validation_data: ValidationData = field(default_factory=ValidationData)
    dataset_types: tuple[str, ...] = ("folder",)
    validation_steps: int = 100
    trainable_modules: tuple[str, ...] | None = None
    trainable_text_modules: tuple[str, ...] | None = None
    extra_unet_params: dict | None = None
    extra_text_encoder_params: dict | None = None
    train_batch_size: int = 1
    max_train_steps: int = 500
    learning_rate: float = 5e-5
    lora_learning_rate: float = 5e-5
    embedder_learning_rate: float = 5e-5
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False  # checkpoints the UNet's down, mid and up blocks
    text_encoder_gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    resume_from_checkpoint: str | None = None
    mixed_precision: str | None = "fp16"  # the frozen models' dtype on a GPU ("no": fp32); the CPU runs fp32
    use_8bit_adam: bool = False
    enable_xformers_memory_efficient_attention: bool = True
    enable_torch_2_attn: bool = False
    seed: int = 64  # upstream: None (unseeded); every shipped config sets 64
    train_text_encoder: bool = False
    use_offset_noise: bool = False
    offset_noise_strength: float = 0.1
    extend_dataset: bool = False
    cache_latents: bool = False
    cached_latent_dir: str | None = None
    use_unet_lora: bool = False
    use_text_lora: bool = False
    unet_lora_modules: tuple[str, ...] = ("ResnetBlock2D",)
    text_encoder_lora_modules: tuple[str, ...] = ("CLIPEncoderLayer",)
    lora_rank: int = 16
    lora_path: str = ""
    embedder_path: str | None = None  # avtool's: start from this mapper state dict (upstream always starts fresh)
    keep_checkpoints: int = 2  # avtool's: training checkpoints kept in the run folder

    def __post_init__(self) -> None:
        for name in ("train_text_encoder", "use_unet_lora", "use_text_lora", "use_8bit_adam"):
            if getattr(self, name):
                raise BadInput(f"{name}: only False is supported (avtool trains the audio mapper alone, with torch's AdamW)")
        if self.trainable_modules:
            raise BadInput("trainable_modules: only none is supported (the UNet stays frozen, as in the shipped configs)")
        if self.gradient_accumulation_steps != 1:
            raise BadInput("gradient_accumulation_steps: only 1 is supported", hint="raise train_batch_size instead")
        if set(self.dataset_types) != {"folder"}:
            raise BadInput(f"dataset_types {list(self.dataset_types)}: only ['folder'] is supported (the samples of "
                           "`avtool preprocess tokens`)")
        if (self.mixed_precision or "no") not in MIXED_PRECISIONS:
            raise BadInput(f"mixed_precision {self.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISIONS)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise BadInput(f"lr_scheduler {self.lr_scheduler!r}: expected one of {', '.join(LR_SCHEDULERS)}")
        if self.offset_noise_strength < 0:
            raise BadInput(f"offset_noise_strength: must not be negative, got {self.offset_noise_strength}")
        _ = self.optimizer, self.training  # their own checks, now rather than in the loop

    @property
    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.embedder_learning_rate, weight_decay=self.adam_weight_decay,
                               betas=(self.adam_beta1, self.adam_beta2), eps=self.adam_epsilon)

    @property
    def training(self) -> TrainingConfig:
        """The loop's settings; diffusers' "constant" ignores the warm-up, the others ramp up over lr_warmup_steps."""
        warmup = 0 if self.lr_scheduler == "constant" else self.lr_warmup_steps
        return TrainingConfig(num_steps=self.max_train_steps, warmup_steps=warmup, save_interval=self.checkpointing_steps,
                              grad_clip=0.0, batch_size=self.train_batch_size,
                              min_lr_factor=0.0 if self.lr_scheduler == "cosine" else 1.0,
                              keep_checkpoints=self.keep_checkpoints)

    @property
    def checkpoint_dir(self) -> str:
        """The run folder when none is given."""
        return self.output_dir


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class SampleFiles:
    """One preprocessed sample: `base` is `<folder>/<stem>`, its files are `base` + a suffix of SAMPLE_FILES."""

    base: Path

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)


def find_samples(folder: Path) -> list[SampleFiles]:
    """The samples in `folder` and its subfolders with their latents and BEATs features, sorted."""
    bases = sorted(path.with_name(path.name.removesuffix(LATENT_FILE)) for path in folder.rglob(f"*{LATENT_FILE}"))
    return [sample for sample in map(SampleFiles, bases) if sample.file(BEATS_FEATURES_FILE).is_file()]


def training_samples(config: TempoTokensConfig) -> list[SampleFiles]:
    """The dataset: the complete samples of `train_data.path`, listed `train_data.repeat` times (upstream's repeat)."""
    folder = Path(config.train_data.path)
    if not folder.is_dir():
        raise BadInput(f"train_data.path {folder}: no such folder", hint=PREPROCESS_HINT)
    samples = find_samples(folder)
    if not samples:
        raise BadInput(f"train_data.path {folder}: no preprocessed sample (a {LATENT_FILE} with its {BEATS_FEATURES_FILE})",
                       hint=PREPROCESS_HINT)
    return samples * config.train_data.repeat


def check_inputs(config: TempoTokensConfig, weights_dir: Path) -> list[Path]:
    """Check the samples, the zeroscope files training loads and `embedder_path` before anything loads; those files."""
    training_samples(config)
    check = WeightsCheck(weights_dir)
    components = {"tokenizer": ("transformers", "CLIPTokenizer"), "text_encoder": ("transformers", "CLIPTextModel"),
                  "unet": ("diffusers", "UNet3DConditionModel")}
    files = [path for paths in check.pipeline("tempotokens", ZEROSCOPE_FOLDER, components).values() for path in paths]
    files.append(check.file("tempotokens", f"{ZEROSCOPE_FOLDER}/scheduler/scheduler_config.json"))
    files.append(check.file("tempotokens", f"{ZEROSCOPE_FOLDER}/vae/config.json"))  # the latents' scaling factor
    check.raise_if_missing()
    if config.embedder_path is not None and not Path(config.embedder_path).is_file():
        raise BadInput(f"embedder_path {config.embedder_path}: no such file", hint="a learned_embeds.pth, or leave it out")
    return files


CONFIG = TempoTokensConfig  # what `avtool.pipelines.train` reads a config file into
