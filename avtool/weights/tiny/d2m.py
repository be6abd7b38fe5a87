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
