"""Tiny random VidMuse in the real layouts: audiocraft export `state_dict.bin` + `compression_state_dict.bin`,
transformers `encodec_32khz` and `clip-vit-base-patch32` folders.

The LM keeps the real token space (4 codebooks x 2048, delay pattern) and the codec the real 32 kHz / hop 640
(50 Hz), so token counts per second are the real ones; widths are cut down. CLIP sees 64 px frames in 32 px
patches (5 tokens per frame instead of 50). The vision tower inside state_dict.bin equals the CLIP folder's, as
in the real files (upstream loads openai's CLIP, frozen, then overwrites it from state_dict.bin). Every weight,
including the fusion's zero-initialised `final_linear`, is random and non-zero so each path changes the output.
"""

from __future__ import annotations

import json
from pathlib import Path

XP_CFG = {  # the keys audiocraft's loader reads, as `OmegaConf.to_yaml` writes them; tiny sizes
    "lm_model": "transformer_lm",
    "sample_rate": 32000,
    "channels": 1,
    "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
    "transformer_lm": {
        "dim": 32, "num_heads": 4, "num_layers": 2, "hidden_scale": 4, "n_q": 4, "card": 2048,
        "dim_head": 8,  # LMModel argument (upstream default 64), set here to keep the per-frame transformers tiny
        "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False, "bias_attn": False,
        "bias_proj": False, "past_context": None, "causal": True, "custom": False, "memory_efficient": True,
        "attention_as_float32": False, "layer_scale": None, "positional_embedding": "sin", "xpos": False,
        "checkpointing": "none", "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True,
        "norm": "layer_norm", "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
        "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
    },
    "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0}},
    "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
    "attribute_dropout": {},
    "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
              "cross": ["description"], "input_interpolate": []},
    "conditioners": {"description": {"model": "t5", "t5": {"name": "t5-base", "finetune": False, "word_dropout": 0.3,
                                                           "normalize_text": False}}},
    "video": {"visual_encoder": "clip", "video_fps": 2, "video_overlap": 0,
              "add_global": {"if_add_gobal": True, "global_feature_path": "", "mode": "average", "num_frames": 64}},
}
EXPORT_VERSION = "1.2.0a1"  # the audiocraft version VidMuse vendors

CLIP_VISION = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 64, "patch_size": 32, "projection_dim": 16}
CLIP_TEXT = {"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 16, "projection_dim": 16,
             "bos_token_id": 97, "eos_token_id": 98, "pad_token_id": 1}
CLIP_PREPROCESSOR = {  # openai/clip-vit-base-patch32's, at the tiny image size
    "crop_size": CLIP_VISION["image_size"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "size": CLIP_VISION["image_size"],
}
ENCODEC = {  # facebook/encodec_32khz's structure (ratios 8,5,4,4 → hop 640, 2.2 kbps → 4 x 2048), narrow
    "sampling_rate": 32000, "audio_channels": 1, "target_bandwidths": [2.2], "upsampling_ratios": [8, 5, 4, 4],
    "codebook_size": 2048, "hidden_size": 16, "codebook_dim": 16, "num_filters": 4, "num_lstm_layers": 1,
    "num_residual_layers": 1, "norm_type": "weight_norm", "normalize": False, "use_causal_conv": False,
    "chunk_length_s": None, "overlap": None, "pad_mode": "reflect", "compress": 2, "kernel_size": 7,
    "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_growth_rate": 2, "use_conv_shortcut": False,
    "trim_right_ratio": 1.0,
}


def folders() -> dict[str, str]:
    """Component folder names of the registry's `vidmuse` entry, by upstream repository."""
    from avtool.weights.registry import get_model

    return {component.repo: component.folder for component in get_model("vidmuse").components}


def build(weights_dir: Path) -> Path:
    """Write the tiny `vidmuse/`, `encodec_32khz/` and `clip-vit-base-patch32/` folders under `weights_dir`."""
    names = folders()
    weights_dir = Path(weights_dir)
    clip = _write_clip(weights_dir / names["openai/clip-vit-base-patch32"])
    _write_encodec(weights_dir / names["facebook/encodec_32khz"])
    return write_checkpoint(weights_dir / names["HKUSTAudio/VidMuse"], clip)


def write_checkpoint(folder: Path, clip=None, seed: int = 0) -> Path:
    """`state_dict.bin` (audiocraft export dict) and `compression_state_dict.bin` in `folder`."""
    import torch
    import yaml

    from avtool.models.vidmuse import VidMuseConfig, build_vidmuse, to_upstream_state_dict

    text = yaml.safe_dump(XP_CFG, sort_keys=False)
    clip = clip if clip is not None else _tiny_clip()
    torch.manual_seed(seed)
    model = build_vidmuse(VidMuseConfig.from_xp_cfg(text), clip.vision_model.config, device="cpu")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("lm.") and parameter.ndim == 2:
                parameter.normal_(0.0, 2.0 / parameter.shape[-1] ** 0.5)  # peaked logits: greedy tokens are not ties
            elif name.endswith("final_linear.weight"):
                parameter.normal_(0.0, 0.1)
        model.video.visual_encoder_model.vision_model.load_state_dict(clip.vision_model.state_dict())
        model.video.visual_encoder_model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export = {"best_state": to_upstream_state_dict(model), "xp.cfg": text, "version": EXPORT_VERSION, "exported": True}
    torch.save(export, folder / "state_dict.bin")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": EXPORT_VERSION},
               folder / "compression_state_dict.bin")
    return folder


def _tiny_clip():
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    return CLIPModel(CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)).eval()


def _write_clip(folder: Path):
    """A CLIPModel checkpoint as on the Hub (config.json with both towers, model.safetensors, preprocessor_config.json)."""
    clip = _tiny_clip()
    clip.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2) + "\n")
    return clip


def _write_encodec(folder: Path) -> None:
    import torch
    from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

    torch.manual_seed(2)
    codec = EncodecModel(EncodecConfig(**ENCODEC)).eval()
    for layer in codec.quantizer.layers:  # codebooks start at zero (k-means fills them in training): every code would sound the same
        layer.codebook.embed.normal_()
        layer.codebook.inited.fill_(1.0)
    codec.save_pretrained(folder, safe_serialization=True)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0, chunk_length_s=None,
                            overlap=None).save_pretrained(folder)
