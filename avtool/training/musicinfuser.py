"""MusicInfuser fine-tuning (upstream `music_infuser/train.py`) as a task of the shared training loop.

    the frozen Mochi DiT, loaded as `avtool dance` loads it (no adapter merged)
    + trainable: genmo's LoRA on every attention projection (kept unmerged), the audio projector and the audio
      cross-attention layers, freshly initialised as upstream does
    data: the clips `avtool preprocess dance` wrote (latent, T5 embeddings of the detailed and basic prompt, wav2vec2)
    loss: flow matching, sigma ~ Beta(1, beta(step)), caption dropout, basic-prompt ratio (see `training_example`)
    result: `model_<step>.adapter.safetensors`, upstream's file layout, names and `kwargs` metadata

Trainable parameters are kept in fp32 (upstream trains them in bf16 without a master copy); the frozen DiT is in
the run dtype, and a bf16/fp16 run computes under autocast, as upstream's bf16 autocast. The adapter file is written
in the run dtype (bf16 on a GPU, as the published file).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from avtool.errors import BadInput
from avtool.models.lora import attach_packed_lora
from avtool.models.mochi import MochiFlowModel
from avtool.models.musicinfuser import (
    AUDIO_CROSS_ATTN_LAYERS,
    MusicInfuserTransformer,
    adapter_metadata,
    load_dance_transformer,
    lora_projections,
)
from avtool.training.musicinfuser_config import (
    AUDIO_FILE,
    BASIC_EMBED_FILE,
    DETAILED_EMBED_FILE,
    LATENT_FILE,
    ClipFiles,
    LoraKwargs,
    MusicInfuserConfig,
    check_inputs,
    training_clips,
)
from avtool.weights.layout import MOCHI_FOLDER

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------------------
# The training example of one step


def beta_parameter(step: int, beta_beta: float | None, beta_half: float) -> float:
    """β of sigma ~ Beta(1, β) at `step`: from `beta_beta` halfway towards 1 every `beta_half` steps (upstream
    train.py line 381: `1 + (beta_beta - 1) * exp(-(step / half_life) * log 2)`); 1 (uniform) for beta_beta None."""
    if beta_beta is None:
        return 1.0
    return 1 + (beta_beta - 1) * math.exp(-(step / beta_half) * math.log(2))


def sample_sigma(batch: int, beta: float, generator: torch.Generator) -> torch.Tensor:
    """(batch,) draws of Beta(1, β) by inverting its CDF 1 - (1 - σ)^β (upstream draws them with
    torch.distributions.Beta, which takes no generator)."""
    uniform = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (1 - (1 - uniform) ** (1 / beta)).float()


@dataclass
class TrainingExample:
    """The DiT's inputs and target for one batch, on the CPU."""

    noisy: torch.Tensor  # (B, C, T, H, W) (1 - σ) z + σ ε, z in raw VAE space (as upstream)
    sigma: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, C, T, H, W) (z - ε - mean) / std
    text: torch.Tensor  # (B, 256, D) T5 features, zero where the caption is dropped
    text_mask: torch.Tensor  # (B, 256) bool, all False where the caption is dropped
    audio: torch.Tensor  # (B, T_a, C) wav2vec2 features


def training_example(clips: list[ClipFiles], generator: torch.Generator, step: int, config: MusicInfuserConfig,
                     latents_mean: torch.Tensor, latents_std: torch.Tensor) -> TrainingExample:
    """Upstream's `get_batch` and flow-matching pair (train.py lines 362-390, 441-443, 457), all randomness from
    `generator`: the basic prompt with probability basic_prompt_ratio, z ~ N(mean, exp(logvar)) of the clip's VAE
    posterior, ε ~ N(0, I), σ ~ Beta(1, β(step)), the caption dropped with probability caption_dropout."""
    batch = len(clips)
    use_basic = torch.rand(batch, generator=generator) < config.basic_prompt_ratio
    embeds = [load(clip.file(BASIC_EMBED_FILE if basic else DETAILED_EMBED_FILE)) for clip, basic in zip(clips, use_basic, strict=True)]
    posteriors = [load(clip.file(LATENT_FILE)) for clip in clips]
    mean = _stack([p["mean"] for p in posteriors], "latent")
    logvar = _stack([p["logvar"] for p in posteriors], "latent")
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    eps = torch.randn(z.shape, generator=generator)
    sigma = sample_sigma(batch, beta_parameter(step, config.beta_beta, config.beta_half), generator)
    keep_caption = (torch.rand(batch, generator=generator) >= config.training.caption_dropout).float()

    sigma_5d = sigma.view(-1, 1, 1, 1, 1)
    stats_shape = (1, -1, 1, 1, 1)
    # Upstream quirk kept for parity: only the target is normalised with the VAE stats, not the DiT's input.
    target = (z - eps - latents_mean.view(stats_shape)) / latents_std.view(stats_shape)
    text = _stack([e["y_feat"][0] for e in embeds], "T5 embedding") * keep_caption.view(-1, 1, 1)
    text_mask = _stack([e["y_mask"][0] for e in embeds], "T5 mask") & keep_caption.bool().view(-1, 1)
    audio = _stack([load(clip.file(AUDIO_FILE))["audio_embeddings"] for clip in clips], "wav2vec2 feature")
    return TrainingExample((1 - sigma_5d) * z + sigma_5d * eps, sigma, target, text, text_mask, audio.float())


def _stack(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise BadInput(f"the clips of one batch have {what}s of different shapes {[tuple(t.shape) for t in tensors]}",
                       hint="preprocess every clip with the same --num-frames, or train with training.batch_size 1")
    return torch.cat(tensors)


# --------------------------------------------------------------------------------------------------------------
# The model


class CheckpointedBlock(nn.Module):
    """A transformer block whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():
            return checkpoint(self.block, *inputs, use_reentrant=False)
        return self.block(*inputs)


def vae_latent_stats(weights_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std of Mochi's VAE latents (genmo's `vae_stats.py`), from the VAE's config."""
    from diffusers import AutoencoderKLMochi

    config = AutoencoderKLMochi.load_config(Path(weights_dir) / MOCHI_FOLDER / "vae")
    return torch.tensor(config["latents_mean"]), torch.tensor(config["latents_std"])


def add_trainable_adapter(transformer: MusicInfuserTransformer, audio_dim: int, layers: tuple[int, ...],
                          lora: LoraKwargs, attention_window: int | None = None) -> dict[str, nn.Parameter]:
    """Attach a fresh audio adapter after `layers` and genmo's LoRA on every attention projection (unmerged);
    return the new parameters, in a fixed order, under their names in upstream's adapter file."""
    transformer.add_audio_adapter(audio_dim, layers, attention_window)
    named: dict[str, nn.Parameter] = {}
    for name, targets in lora_projections(transformer).items():
        rank, alpha = ((lora.qkv_proj_lora_rank, lora.qkv_proj_lora_alpha) if ".qkv_" in name
                       else (lora.out_proj_lora_rank, lora.out_proj_lora_alpha))
        packed = attach_packed_lora(transformer, targets, rank, alpha)
        named.update({f"{name}.{key}": value for key, value in packed.named_parameters()})
    for prefix in ("audio_projection", "audio_cross_attn_blocks"):
        named.update({f"{prefix}.{key}": value for key, value in transformer.get_submodule(prefix).named_parameters()})
    return named


class MusicInfuserTask:
    """The `TrainTask` of MusicInfuser: LoRA + audio adapter on the frozen Mochi DiT (see the module's note).

    `dtype` None: the config's `training.model_dtype` on a GPU, fp32 on the CPU.
    """

    def __init__(self, config: MusicInfuserConfig, weights_dir: Path, device: str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        from avtool.runtime import resolve_device, resolve_shard

        self.config = config
        self.device = resolve_device(device, resolve_shard(None))  # under torchrun: cuda:LOCAL_RANK
        self.dtype = dtype or (DTYPES[config.training.model_dtype] if self.device.startswith("cuda") else torch.float32)
        self.clips = training_clips(config)
        transformer_files = check_inputs(config, weights_dir)
        self.latents_mean, self.latents_std = vae_latent_stats(weights_dir)
        shards = [path for path in transformer_files if path.name != "config.json"]
        self.transformer = load_dance_transformer(Path(weights_dir) / MOCHI_FOLDER / "transformer", shards, None,
                                                  self.device, self.dtype)
        audio_dim = load(self.clips[0].file(AUDIO_FILE))["audio_embeddings"].shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the same fresh adapter on every rank and in every run
            try:
                layers = config.audio_cross_attn_layers or AUDIO_CROSS_ATTN_LAYERS
                self.parameters = add_trainable_adapter(self.transformer, audio_dim, layers, config.model.kwargs,
                                                        config.audio_attention_window)
            except ValueError as error:
                raise BadInput(f"audio_cross_attn_layers: {error}") from None
        self.transformer.to(self.device)  # the new audio modules; the LoRA is made on its Linear's device
        self._checkpoint_blocks(max(config.training.num_qkv_checkpoint, config.training.num_ff_checkpoint))
        self.flow = MochiFlowModel(self.transformer)

    def _checkpoint_blocks(self, count: int) -> None:
        blocks = self.transformer.transformer_blocks
        for i in range(min(count, len(blocks))):
            blocks[i] = CheckpointedBlock(blocks[i])

    # TrainTask

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters.values())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors under upstream's names, fp32 copies on the CPU."""
        return {name: value.detach().cpu().clone() for name, value in self.parameters.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.parameters):
            different = sorted(set(state) ^ set(self.parameters))
            raise BadInput(f"the checkpoint's adapter does not fit this config's model (keys {', '.join(different[:3])})")
        with torch.no_grad():
            for name, value in self.parameters.items():
                value.copy_(state[name])

    def dataset(self) -> list[ClipFiles]:
        return self.clips

    def loss(self, batch: list[ClipFiles], generator: torch.Generator, step: int) -> torch.Tensor:
        example = training_example(batch, generator, step, self.config, self.latents_mean, self.latents_std)
        return self.example_loss(example)

    def example_loss(self, example: TrainingExample) -> torch.Tensor:
        """Upstream's MSE between the DiT's prediction and the normalised flow target."""
        device = torch.device(self.device)
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            prediction = self.flow(example.noisy.to(device), example.sigma.to(device), example.text.to(device),
                                   example.text_mask.to(device), audio_features=example.audio.to(device))
        return F.mse_loss(prediction.float(), example.target.to(device))

    def save_result(self, run_dir: Path, step: int) -> Path:
        """Write `run_dir/model_<step>.adapter.safetensors`, upstream's layout, names and metadata, in the run dtype."""
        from safetensors.torch import save_file

        from avtool.media.files import atomic_output

        state = {name: value.detach().to("cpu", self.dtype).contiguous() for name, value in self.parameters.items()}
        layers = self.transformer.config.audio_cross_attn_layers
        path = Path(run_dir) / f"model_{step}.adapter.safetensors"
        with atomic_output(path) as tmp:
            metadata = adapter_metadata(dataclasses.asdict(self.config.model.kwargs), layers, self.config.audio_attention_window)
            save_file(state, str(tmp), metadata=metadata)
        return path


Task = MusicInfuserTask  # what `avtool.pipelines.train` builds
