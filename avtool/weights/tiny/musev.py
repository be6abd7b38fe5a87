"""Tiny random MuseV in the `TMElyralab/MuseV` hub layout, under `musev/`:

- `motion/<variant>/unet/{config.json, diffusion_pytorch_model.bin}` for the three variants, plus
  `motion/musev_referencenet/referencenet/...` and `motion/<referencenet variants>/ip_adapter_image_proj.bin`;
- `t2i/sd1.5/majicmixRealv6Fp16/` (a diffusers SD1.5 folder), `vae/sd-vae-ft-mse/`,
  `IP-Adapter/models/image_encoder/` (CLIP vision model with projection);

and (`build_controlnet`) an openpose ControlNet in the `lllyasviel/control_v11p_sd15_openpose` layout.

Widths are cut down; three UNet blocks whose last two have equal width keep the ReferenceNet index quirk
channel-consistent. Layers upstream zero-initialises (temporal conv4/proj_out, refer-fuse to_out, and the
1e-5 `temporal_weight` scalars), and the ControlNet's zero convolutions, are random here so that every path
changes the output.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from avtool.weights.layout import CONTROLNET_FOLDER
from avtool.weights.layout import MUSEV_BASE_MODEL as BASE_MODEL
from avtool.weights.layout import MUSEV_FOLDER as FOLDER
from avtool.weights.tiny.folders import write_pipeline_folder
from avtool.weights.tiny.tempotokens import VAE_CONFIG, write_clip_tokenizer

TEXT_WIDTH = 16
CLIP_EMBED_DIM = 24
SPATIAL = {"in_channels": 4, "out_channels": 4, "block_out_channels": (8, 16, 16), "layers_per_block": 2,
           "cross_attention_dim": TEXT_WIDTH, "attention_head_dim": 2, "norm_num_groups": 4, "sample_size": 8}
SD_BLOCKS = {"down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")}
TEXT_CONFIG = {"hidden_size": TEXT_WIDTH, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "max_position_embeddings": 77, "projection_dim": TEXT_WIDTH, "hidden_act": "quick_gelu"}
VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "image_size": 32, "patch_size": 8, "projection_dim": CLIP_EMBED_DIM, "hidden_act": "gelu"}
SCHEDULER_CONFIG = {  # SD1.5's scheduler_config.json
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
CONTROLNET_CONDITIONING_CHANNELS = (4, 8, 8, 16)  # three stride-2 convs: control images are 8x the latents
_NOT_ZERO = ("temporal_weight", "conv4.3.", "proj_out.", "refer_emb_attns")
_CONTROLNET_ZERO = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def build(weights_dir: Path) -> list[Path]:
    """Write `musev/` under `weights_dir` (deterministic) and return it."""
    import torch

    from avtool.models.musev.config import VARIANTS, MuseVConfig
    from avtool.models.musev.ip_adapter import ImageProjection
    from avtool.models.musev.referencenet import ReferenceNet
    from avtool.models.musev.unet import MuseVUNet

    root = Path(weights_dir) / FOLDER
    for seed, variant in enumerate(VARIANTS):
        config = MuseVConfig.for_variant(variant, SPATIAL)
        torch.manual_seed(seed)
        _write_model(root / "motion" / variant / "unet", _activated(MuseVUNet(config)),
                     {"_class_name": "UNet3DConditionModel", **asdict(config)})
        if config.ip_adapter_cross_attn:
            torch.manual_seed(10 + seed)
            projection = ImageProjection(TEXT_WIDTH, CLIP_EMBED_DIM)
            torch.save({"image_proj": projection.state_dict()}, root / "motion" / variant / "ip_adapter_image_proj.bin")
    torch.manual_seed(20)
    _write_model(root / "motion/musev_referencenet/referencenet", ReferenceNet(MuseVConfig(**SPATIAL)),
                 {"_class_name": "ReferenceNet2D", **SPATIAL, **SD_BLOCKS})
    write_sd15(root / BASE_MODEL)
    _write_vae(root / "vae/sd-vae-ft-mse")
    _write_image_encoder(root / "IP-Adapter/models/image_encoder")
    return [root]


def build_controlnet(weights_dir: Path) -> list[Path]:
    """Write a ControlNet shaped like the tiny SD1.5 UNet under `weights_dir` (deterministic) and return its folder."""
    import torch
    from diffusers import ControlNetModel

    folder = Path(weights_dir) / CONTROLNET_FOLDER
    torch.manual_seed(60)
    spatial = {key: value for key, value in SPATIAL.items() if key not in ("out_channels", "sample_size")}
    controlnet = ControlNetModel(**spatial, down_block_types=SD_BLOCKS["down_block_types"],
                                 conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(_CONTROLNET_ZERO):
                parameter.copy_(torch.randn_like(parameter) * 0.2)
    controlnet.save_pretrained(folder)
    return [folder]


def write_sd15(folder: Path) -> Path:
    """A diffusers SD1.5 folder (unet weights as `.bin`, which upstream's `update_unet_with_sd` reads)."""
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_clip_tokenizer(folder / "tokenizer", words=prompt_words())
    torch.manual_seed(30)
    unet = UNet2DConditionModel(**SPATIAL, **SD_BLOCKS)
    torch.manual_seed(31)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                                **TEXT_CONFIG)).eval()
    with torch.no_grad():  # an identity final LayerNorm gives outputs of mean ~0, which MuseV's prompt weighting divides by
        text_encoder.final_layer_norm.weight.normal_(1.0, 0.5)
        text_encoder.final_layer_norm.bias.normal_(0.0, 0.5)
    components = {"scheduler": PNDMScheduler.from_config(SCHEDULER_CONFIG), "text_encoder": text_encoder,
                  "tokenizer": tokenizer, "unet": unet, "vae": _write_vae(folder / "vae", seed=32)}
    write_pipeline_folder(folder, "StableDiffusionPipeline", components, saved=("tokenizer", "vae"),
                          unet={"safe_serialization": False})
    return folder


def prompt_words() -> list[str]:
    """The words of MuseV's negative prompts (and of a typical prompt) as whole tokens, as the real tokenizer has
    them: spelled by characters, the V2 negative prompt alone would overflow the three 77-token chunks."""
    import re

    from avtool.models.musev.prompt import NEGATIVE_PROMPTS

    text = " ".join([*NEGATIVE_PROMPTS.values(), "masterpiece best quality highres 1girl 1boy solo eye blinks head wave"])
    return re.findall(r"[a-z0-9]+", text.lower())


def _activated(model):
    """`model` with upstream's zero/1e-5-initialised layers drawn at random (in place)."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in _NOT_ZERO) and parameter.abs().max() < 1e-4:
                parameter.copy_(torch.randn_like(parameter) * 0.2 if "temporal_weight" not in name
                                else torch.full_like(parameter, 0.5))
    return model


def _write_model(folder: Path, model, config: dict) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(model.state_dict(), folder / "diffusion_pytorch_model.bin")


def _write_vae(folder: Path, seed: int = 40):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    vae.save_pretrained(folder)
    return vae


def _write_image_encoder(folder: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(50)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIG)).eval().save_pretrained(folder)
    processor = {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_normalize": True,
                 "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
                 "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 32}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
