"""Tiny random Dance2Music-Diffusion checkpoints in the published layouts.

`build_autoencoder` writes archisound's `dmae1d-ATC32-v3` folder as the Hub has it (config.json + pytorch_model.bin,
the decoder listed under its three aliases), plus an `avtool_architecture` entry in config.json with the tiny sizes.
The time layout is the real one (mel hop 256 and one stride-2 stage; transform stride 32 and four factor-2 U-Net
levels: 512 samples per latent frame, 32 latent channels); widths, block counts and mel bands are cut down.
"""

from __future__ import annotations

import json
from pathlib import Path

from avtool.weights.layout import DMAE_FOLDER as AUTOENCODER_FOLDER

AUTOENCODER_CONFIG = {  # the published config.json's fields
    "architectures": ["DMAE1d"],
    "auto_map": {"AutoConfig": "config.DMAE1dConfig", "AutoModel": "model.DMAE1d"},
    "model_type": "archinetai/dmae1d-ATC32-v3",
    "torch_dtype": "float32",
    "transformers_version": "4.24.0",
}
SEED = 0


def tiny_autoencoder_config():
    """The tiny DMAEConfig: every published time factor, narrow everything else."""
    from avtool.models.d2m.autoencoder import DMAEConfig
    from avtool.models.d2m.encoder import MelEncoderConfig
    from avtool.models.d2m.unet import UNetConfig

    encoder = MelEncoderConfig(mel_channels=8, channels=16, num_blocks=(1,), resnet_groups=4)
    unet = UNetConfig(in_channels=8, channels=(8, 16, 16, 16, 16), factors=(1, 2, 2, 2, 2), items=(1,) * 5,
                      attentions=(0,) * 5, cross_attentions=(0,) * 5, context_channels=(0, 0, 0, 0, encoder.out_channels),
                      embedding_features=None, resnet_groups=4, modulation_features=16)
    return DMAEConfig(encoder=encoder, unet=unet, num_filters=4)


def build_autoencoder(weights_dir: Path) -> None:
    """Write `weights_dir/dmae1d-ATC32-v3/{config.json, pytorch_model.bin}` (deterministic, about 270 KB)."""
    import torch

    from avtool.models.d2m.autoencoder import ARCHITECTURE_KEY, CONFIG_FILE, DMAE, WEIGHTS_FILE, dmae_state_dict

    config = tiny_autoencoder_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = DMAE(config).eval()
    folder = Path(weights_dir) / AUTOENCODER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    config_json = {**AUTOENCODER_CONFIG, ARCHITECTURE_KEY: config.to_architecture()}
    (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=2) + "\n")
    torch.save(dmae_state_dict(model), folder / WEIGHTS_FILE)


TINY_MOT = {"depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 32}  # dim 219 and the 356-frame window stay the real ones
TINY_UNET = {"channels": (8, 16), "factors": (1, 2), "items": (1, 1), "attentions": (0, 1), "cross_attentions": (1, 1),
             "attention_heads": 2, "attention_features": 4, "resnet_groups": 4, "modulation_features": 16}


def build_d2m(weights_dir: Path) -> None:
    """Write `weights_dir/d2m/` as `avtool train configs/d2m.yaml` leaves a run folder: upstream's two state dicts
    and d2m.json, for the tiny sizes (`model: {mot: TINY_MOT, unet: TINY_UNET}` in a config trains the same)."""
    import torch

    from avtool.models.d2m.checkpoint import save_d2m
    from avtool.models.d2m.diffusion import D2MConfig, D2MDenoiser
    from avtool.models.d2m.mot import MOT, MOTConfig
    from avtool.models.d2m.unet import UNetConfig
    from avtool.weights.layout import D2M_FOLDER

    mot_config = MOTConfig(**TINY_MOT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        mot = MOT(mot_config)
        denoiser = D2MDenoiser(D2MConfig(UNetConfig(**TINY_UNET), mot_config.num_frames + 1))
    save_d2m(Path(weights_dir) / D2M_FOLDER, mot, denoiser)


def build(weights_dir: Path) -> None:
    """The tiny autoencoder and a tiny trained-D2M folder: what `avtool score --model d2m` reads."""
    build_autoencoder(weights_dir)
    build_d2m(weights_dir)
