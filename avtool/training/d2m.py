"""Dance2Music-Diffusion training (upstream `train_con_116_latent_unet_MOT_origendata_219prompt.py`) as a task of
the shared training loop.

    trainable: MOT and the latent U-Net (with its time conditioning and learned null tokens), fresh and seeded
    data: the windows `avtool preprocess d2m` wrote (motion features, dmae1d-ATC32-v3 latents of the music)
    loss: tokens, genre logits = MOT(motion); σ ~ U(0, 1), ε ~ N(0, I), x_σ = cos(σπ/2) x + sin(σπ/2) ε;
          0.1 · MSE(U-Net(x_σ, σ, tokens with whole samples masked to the null tokens at p = 0.2), v)
          + cross-entropy(genre logits, the AIST++ genre)
    optimiser: two AdamW groups (U-Net, MOT) with upstream's settings, StepLR per 30 epochs
    result: the run folder holds a D2M folder: upstream's two state dicts and d2m.json (`score --checkpoint`)

Upstream steps its two optimisers after two backward passes (0.1 · diffusion loss into both models, then the
cross-entropy into MOT): the same gradients as one backward pass of the sum, which is what runs here. MOT runs in
fp32 as upstream; the U-Net under bf16 autocast on a GPU (upstream: fp16, which needs a grad scaler).
"""

from __future__ import annotations

from dataclasses import asdict
from math import pi
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avtool.errors import BadInput
from avtool.models.d2m.checkpoint import save_d2m
from avtool.models.d2m.diffusion import D2MConfig, D2MDenoiser
from avtool.models.d2m.mot import MOT
from avtool.training.d2m_config import LATENT_FILE, MOTION_FILE, D2MTrainConfig, Window, training_windows
from avtool.training.loop import device_generator


class D2MTask:
    """The `TrainTask` of Dance2Music-Diffusion (see the module's note)."""

    def __init__(self, config: D2MTrainConfig, weights_dir: Path, device: str = "cpu") -> None:
        from avtool.runtime import resolve_device, resolve_shard

        self.config = config
        self.device = resolve_device(device, resolve_shard(None))  # under torchrun: cuda:LOCAL_RANK
        self.autocast_dtype = torch.bfloat16 if config.mixed_precision == "bf16" and self.device.startswith("cuda") else None
        self.windows = training_windows(config)
        mot_config, unet_config = config.model.configs()
        with torch.random.fork_rng(devices=[]):  # the same fresh models on every rank and in every run
            torch.manual_seed(config.seed)
            self.mot = MOT(mot_config)
            self.denoiser = D2MDenoiser(D2MConfig(unet_config, mot_config.num_frames + 1))
        self.mot.to(self.device).train()
        self.denoiser.to(self.device).train()

    # TrainTask

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.denoiser.parameters(), *self.mot.parameters()]

    def optimizer_groups(self) -> list[dict]:
        """Upstream's two optimisers as two AdamW groups: the U-Net's and MOT's settings."""
        return [{"params": list(self.denoiser.parameters()), **asdict(self.config.unet_optimizer)},
                {"params": list(self.mot.parameters()), **asdict(self.config.mot_optimizer)}]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{key}": value.detach().cpu().clone()
                for name, module in (("denoiser", self.denoiser), ("mot", self.mot)) for key, value in module.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        try:
            for name, module in (("denoiser", self.denoiser), ("mot", self.mot)):
                module.load_state_dict({key.removeprefix(f"{name}."): value for key, value in state.items() if key.startswith(f"{name}.")})
        except RuntimeError as error:
            raise BadInput(f"the checkpoint's D2M does not fit this config's model sizes ({str(error).splitlines()[0]})") from None

    def dataset(self) -> list[Window]:
        return self.windows

    def loss(self, batch: list[Window], generator: torch.Generator, step: int) -> torch.Tensor:
        """0.1 · the v-diffusion loss + the genre cross-entropy, all randomness from `generator` (and the global RNG
        for MOT's dropout)."""
        device = torch.device(self.device)
        motion = torch.from_numpy(np.stack([np.load(window.file(MOTION_FILE)) for window in batch])).float().to(device)
        latents = torch.cat([torch.load(window.file(LATENT_FILE), map_location="cpu", weights_only=True)["latent"] for window in batch])
        genres = torch.tensor([window.genre for window in batch], device=device)

        tokens, genre_logits = self.mot(motion)
        sigmas = torch.rand(len(batch), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        alphas, betas = (f(sigmas * pi / 2)[:, None, None] for f in (torch.cos, torch.sin))
        noisy, target = alphas * latents + betas * noise, alphas * noise - betas * latents
        with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            v = self.denoiser(noisy.to(device), sigmas.to(device), tokens, embedding_mask_proba=self.config.embedding_mask_proba,
                              generator=device_generator(generator, self.device))
        diffusion = F.mse_loss(v.float(), target.to(device))
        return self.config.diffusion_loss_weight * diffusion + F.cross_entropy(genre_logits.float(), genres)

    def save_result(self, run_dir: Path, step: int) -> Path:
        """The run folder becomes a D2M folder: upstream's `dancecondation_test_final.pt`, `MOT_final.pt`, and d2m.json."""
        save_d2m(Path(run_dir), self.mot, self.denoiser)
        return Path(run_dir)


Task = D2MTask  # what `avtool.pipelines.train` builds
