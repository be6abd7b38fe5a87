"""Tiny random MusicInfuser adapter (genmo key layout, bf16, metadata `kwargs`) and tiny wav2vec2-base-960h.

The adapter fits the tiny Mochi transformer of `tiny/mochi.py`. Its LoRA and audio weights are all
non-zero so that the music changes the output. The tiny wav2vec2 keeps the real conv feature extractor
(kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2), so T_a per clip length is the real model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from avtool.models.musicinfuser import LAYERS_METADATA_KEY
from avtool.weights.layout import ADAPTER_FILE, ADAPTER_FOLDER, WAV2VEC_FOLDER
from avtool.weights.tiny.mochi import TRANSFORMER_CONFIG

TINY_AUDIO_LAYERS = (1, 3)  # the tiny DiT has 4 blocks; stored in the file's avtool metadata entry
LORA_KWARGS = {  # scales 2.0 (qkv) and 1.0 (out), so a converter that ignores alpha/rank is caught
    "qkv_proj_lora_rank": 4, "qkv_proj_lora_alpha": 8, "qkv_proj_lora_dropout": 0.0,
    "out_proj_lora_rank": 2, "out_proj_lora_alpha": 2, "out_proj_lora_dropout": 0.0,
}

WAV2VEC_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16,) * 7,
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_bias": False,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "vocab_size": 32,
}


def build(weights_dir: Path) -> Path:
    """Write `weights_dir/musicinfuser/musicinfuser.safetensors` and `weights_dir/wav2vec2-base-960h/`."""
    weights_dir = Path(weights_dir)
    write_adapter(weights_dir / ADAPTER_FOLDER / ADAPTER_FILE)
    _write_wav2vec(weights_dir / WAV2VEC_FOLDER)
    return weights_dir / ADAPTER_FOLDER


def adapter_state_dict(zero_outputs: bool = False, seed: int = 0) -> dict:
    """Genmo-named adapter tensors (bf16) for the tiny DiT; `zero_outputs` zeroes every lora_B and to_out."""
    import torch

    dim = TRANSFORMER_CONFIG["num_attention_heads"] * TRANSFORMER_CONFIG["attention_head_dim"]
    text_dim = TRANSFORMER_CONFIG["pooled_projection_dim"]
    audio_dim = WAV2VEC_CONFIG["hidden_size"]
    num_blocks = TRANSFORMER_CONFIG["num_layers"]
    qkv_rank, out_rank = LORA_KWARGS["qkv_proj_lora_rank"], LORA_KWARGS["out_proj_lora_rank"]

    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(num_blocks):
        shapes[f"blocks.{i}.attn.qkv_x.lora_A"] = (qkv_rank, dim)
        shapes[f"blocks.{i}.attn.qkv_x.lora_B"] = (3 * dim, qkv_rank)
        shapes[f"blocks.{i}.attn.qkv_y.lora_A"] = (qkv_rank, text_dim)
        shapes[f"blocks.{i}.attn.qkv_y.lora_B"] = (3 * dim, qkv_rank)
        shapes[f"blocks.{i}.attn.proj_x.lora_A"] = (out_rank, dim)
        shapes[f"blocks.{i}.attn.proj_x.lora_B"] = (dim, out_rank)
        if i < num_blocks - 1:  # the last block updates no text stream, so it has no proj_y
            shapes[f"blocks.{i}.attn.proj_y.lora_A"] = (out_rank, dim)
            shapes[f"blocks.{i}.attn.proj_y.lora_B"] = (text_dim, out_rank)
    shapes["audio_projection.projection.0.weight"] = (dim, audio_dim)
    shapes["audio_projection.projection.0.bias"] = (dim,)
    shapes["audio_projection.projection.2.weight"] = (dim, dim)
    shapes["audio_projection.projection.2.bias"] = (dim,)
    for j in range(len(TINY_AUDIO_LAYERS)):
        for name in ("to_q", "to_k", "to_v", "to_out"):
            shapes[f"audio_cross_attn_blocks.{j}.{name}.weight"] = (dim, dim)
            shapes[f"audio_cross_attn_blocks.{j}.{name}.bias"] = (dim,)

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        fan_in = shape[-1] if len(shape) == 2 else 1
        tensor = torch.randn(shape, generator=generator) / fan_in**0.5
        if zero_outputs and (key.endswith("lora_B") or ".to_out." in key):
            tensor.zero_()
        state[key] = tensor.to(torch.bfloat16)
    return state


def write_adapter(path: Path, zero_outputs: bool = False, seed: int = 0) -> Path:
    """Write a tiny adapter file at `path` with upstream's metadata and avtool's layer list."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"kwargs": json.dumps(LORA_KWARGS), LAYERS_METADATA_KEY: json.dumps(TINY_AUDIO_LAYERS)}
    save_file(adapter_state_dict(zero_outputs, seed), str(path), metadata=metadata)
    return path


def _write_wav2vec(folder: Path) -> None:
    """wav2vec2-base-960h as on the Hub: a Wav2Vec2ForCTC checkpoint plus the feature extractor's config."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(3)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**WAV2VEC_CONFIG)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
