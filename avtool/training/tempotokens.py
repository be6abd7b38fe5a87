"""TempoTokens mapper training (upstream `train.py::finetune_unet`) as a task of the shared training loop.

    frozen: zeroscope's UNet3D (one text context per frame, `FrameConditionedUNet`) and CLIP text encoder with the
            six placeholder tokens, loaded as `avtool tokens` loads them
    trainable: the audio mapper (upstream's `TempEmbedder`), fresh as upstream (seeded), or from `embedder_path`
    data: the samples `avtool preprocess tokens` wrote (VAE posterior, BEATs features, prompt)
    loss: z ~ the cached posterior x scaling factor, ε ~ N(0, I) (+ offset noise), t ~ U{0..T-1}, z_t by the DDPM
          schedule; MSE(UNet(z_t, t, per-frame text of the mapper's tokens), ε) + 0.01 x mean |temporal token|
    result: `at_embedder_<step>.pth` and `learned_embeds.pth`, the mapper's plain state dict (`avtool tokens --mapper`)

The mapper is kept in fp32; the frozen models are in the run dtype (`mixed_precision` on a GPU, fp32 on the CPU).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from avtool.errors import BadInput
from avtool.models.tempotokens import AudioTokenMapper, FrameConditionedUNet, MapperTokens, add_placeholder_tokens, encode_frames
from avtool.models.tempotokens.text import prompt_with_tokens
from avtool.training.loop import device_generator
from avtool.training.tempotokens_config import (
    BEATS_FEATURES_FILE,
    LATENT_FILE,
    PROMPT_FILE,
    SampleFiles,
    TempoTokensConfig,
    check_inputs,
    training_samples,
)
from avtool.weights.layout import ZEROSCOPE_FOLDER

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
POOL_DROPOUT = 0.5  # upstream's FGA unary dropout, always active in training
TOKEN_PENALTY = 0.01  # upstream's weight of mean |temporal token| in the loss
HIDDEN_SHARE = 4  # a fresh mapper's hidden width is its input width / 4 (upstream: 9216 -> 2304)
RESULT_FILE = "learned_embeds.pth"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class TempoTokensTask:
    """The `TrainTask` of TempoTokens: the audio mapper against the frozen zeroscope (see the module's note)."""

    def __init__(self, config: TempoTokensConfig, weights_dir: Path, device: str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from avtool.runtime import resolve_device, resolve_shard
        from avtool.sampling import read_scheduler_config
        from avtool.weights.loading import load_pretrained

        self.config = config
        self.device = resolve_device(device, resolve_shard(None))  # under torchrun: cuda:LOCAL_RANK
        self.dtype = dtype or (DTYPES[config.mixed_precision or "no"] if self.device.startswith("cuda") else torch.float32)
        check_inputs(config, weights_dir)
        self.samples = training_samples(config)
        zeroscope = Path(weights_dir) / ZEROSCOPE_FOLDER
        self.tokenizer = load_pretrained(CLIPTokenizer, zeroscope / "tokenizer")
        text_encoder = load_pretrained(CLIPTextModel, zeroscope / "text_encoder")
        self.placeholder_ids = add_placeholder_tokens(self.tokenizer, text_encoder)
        self.text_encoder = frozen(text_encoder, self.device, self.dtype)
        unet = frozen(load_pretrained(UNet3DConditionModel, zeroscope / "unet"), self.device, self.dtype)
        if config.gradient_checkpointing:
            checkpoint_blocks(unet)
        self.unet = FrameConditionedUNet(unet)
        self.scheduler = DDPMScheduler.from_config(read_scheduler_config(zeroscope / "scheduler"))
        self.scaling_factor = AutoencoderKL.load_config(zeroscope / "vae").get("scaling_factor", 0.18215)
        self.mapper = self._mapper(text_encoder.get_input_embeddings().embedding_dim).to(self.device)
        self.mapper.pool_dropout = POOL_DROPOUT

    def _mapper(self, width: int) -> AudioTokenMapper:
        """The mapper from `embedder_path`, else fresh: the same on every rank and in every run (seeded)."""
        from avtool.weights.loading import load_state_dict

        features = load(self.samples[0].file(BEATS_FEATURES_FILE))["features"].shape[-1]
        if self.config.embedder_path is not None:
            mapper = AudioTokenMapper.from_state_dict(load_state_dict(self.config.embedder_path), self.config.embedder_path)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                mapper = AudioTokenMapper(features, features // HIDDEN_SHARE, width)
        if (mapper.fc1.in_features, mapper.fc4.out_features) != (features, width):
            raise BadInput(f"embedder_path {self.config.embedder_path}: a mapper from {mapper.fc1.in_features} audio "
                           f"features to {mapper.fc4.out_features}-wide tokens does not fit these samples' {features} "
                           f"BEATs features and the text width {width}")
        return mapper.float().train()

    # TrainTask

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.mapper.parameters())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The mapper's state dict under upstream's names, fp32 copies on the CPU."""
        return {name: value.detach().cpu().clone() for name, value in self.mapper.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        try:
            self.mapper.load_state_dict(state)
        except RuntimeError as error:
            raise BadInput(f"the checkpoint's mapper does not fit this config's models ({str(error).splitlines()[0]})") from None

    def dataset(self) -> list[SampleFiles]:
        return self.samples

    def loss(self, batch: list[SampleFiles], generator: torch.Generator, step: int) -> torch.Tensor:
        """Upstream's `finetune_unet` loss, all randomness from `generator`."""
        device = torch.device(self.device)
        latents, noise, timesteps = self.noised_inputs(batch, generator)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        num_frames = latents.shape[2]
        tokens = self.mapper(self.audio_features(batch, num_frames).to(device), num_frames,
                             generator=device_generator(generator, self.device))
        context = self.frame_contexts(batch, tokens)
        prediction = self.unet(noisy.to(device, self.dtype), timesteps.to(device), context)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.to(device)) + TOKEN_PENALTY * tokens.temporal.abs().mean()

    def noised_inputs(self, batch: list[SampleFiles], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(z, ε, t) on the CPU: z = the posterior's sample x scaling factor (upstream's `tensor_to_vae_latent`),
        ε with upstream's optional offset noise (`sample_noise`), t uniform over the training timesteps."""
        posteriors = [load(sample.file(LATENT_FILE)) for sample in batch]
        mean, logvar = (_stack([p[key] for p in posteriors], "latent") for key in ("mean", "logvar"))
        if mean.shape[2] != self.config.train_data.n_sample_frames:
            raise BadInput(f"train_data.n_sample_frames {self.config.train_data.n_sample_frames}: the samples have "
                           f"{mean.shape[2]} frames", hint="preprocess with that --num-frames, or set it to theirs")
        latents = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)) * self.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        if self.config.use_offset_noise:
            offset = torch.randn((*latents.shape[:3], 1, 1), generator=generator)
            noise = noise + self.config.offset_noise_strength * offset
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        return latents, noise, timesteps

    def audio_features(self, batch: list[SampleFiles], num_frames: int) -> torch.Tensor:
        """(B, T, C): the samples' BEATs features, cut to a whole number of tokens per frame as `avtool tokens` cuts them."""
        features = _stack([load(sample.file(BEATS_FEATURES_FILE))["features"] for sample in batch], "BEATs feature")
        return features[:, : features.shape[1] - features.shape[1] % num_frames].float()

    def frame_contexts(self, batch: list[SampleFiles], tokens: MapperTokens) -> torch.Tensor:
        """(B, F, 77, D): each sample's prompt encoded per frame with its mapper tokens in the placeholders."""
        contexts = []
        for b, sample in enumerate(batch):
            own = MapperTokens(tokens.temporal[b : b + 1], tuple(t[b : b + 1] for t in tokens.local), tokens.class_token[b : b + 1])
            contexts.append(encode_frames(self.text_encoder, self.tokenizer, self.prompt(sample), own, self.placeholder_ids))
        return torch.stack(contexts)

    def prompt(self, sample: SampleFiles) -> str:
        """The sample's prompt file, else `fallback_prompt`; text without placeholders gets them appended, as
        `avtool tokens --prompt` does (upstream would train that sample without audio)."""
        path = sample.file(PROMPT_FILE)
        text = path.read_text(errors="replace").strip() if path.is_file() else ""
        return prompt_with_tokens(text or self.config.train_data.fallback_prompt)

    def save_result(self, run_dir: Path, step: int) -> Path:
        """Write `at_embedder_<step>.pth` and `learned_embeds.pth`: the mapper's plain fp32 state dict, as upstream's
        `torch.save(at_embedder.state_dict(), ...)`; returns the latter."""
        from avtool.media.files import atomic_output

        state = self.trainable_state()
        for name in (f"at_embedder_{step}.pth", RESULT_FILE):
            with atomic_output(Path(run_dir) / name) as tmp:
                torch.save(state, tmp)
        return Path(run_dir) / RESULT_FILE


def frozen(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    return model.to(device, dtype).eval().requires_grad_(False)


def checkpoint_blocks(unet: nn.Module) -> None:
    """Recompute each down, mid and up block's activations in the backward pass (upstream's
    `gradient_checkpointing`; diffusers' UNet3D has no switch for it)."""
    for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _stack(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise BadInput(f"the samples of one batch have {what}s of different shapes {[tuple(t.shape) for t in tensors]}",
                       hint="preprocess every video with the same options, or train with train_batch_size 1")
    return torch.cat(tensors)


Task = TempoTokensTask  # what `avtool.pipelines.train` builds
