"""Tiny random `genmo/mochi-1-preview` in the Hub's diffusers layout (MochiPipeline folder).

Same structure as the real checkpoint (48-block AsymmDiT → 4 blocks, VAE with temporal ×6 and
spatial ×8 expansion, T5 encoder, Unigram T5 tokenizer, inverted-sigma flow-match scheduler), with
widths cut down so the whole folder is a few MB and a CPU forward takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from avtool.weights.layout import MOCHI_FOLDER as FOLDER

TRANSFORMER_CONFIG = {
    "patch_size": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 4,
    "pooled_projection_dim": 16,
    "in_channels": 12,
    "text_embed_dim": 32,
    "time_embed_dim": 32,
    "max_sequence_length": 256,
}
# Learned RoPE frequencies start at 0 in diffusers; random ones of this spread make positions matter.
POS_FREQUENCY_STD = 0.5
# avtool reads the default resolution from these (latent units, ×8 px); absent in the real config → 60x106 (480x848).
SAMPLE_SIZE = {"sample_height": 4, "sample_width": 6}

VAE_CONFIG = {
    "encoder_block_out_channels": (32, 32, 32, 32),  # 32 is the smallest width Mochi's GroupNorm(32) allows
    "decoder_block_out_channels": (32, 32, 32, 32),
    "layers_per_block": (0, 1, 1, 1, 1),  # no resnets at full resolution: decode stays well under a second on CPU
}

T5_CONFIG = {
    "d_model": TRANSFORMER_CONFIG["text_embed_dim"],
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, as t5-v1_1-xxl
    "tie_word_embeddings": False,
}

# The default MusicInfuser prompt's words as whole pieces, every printable ASCII character as a fallback piece.
_WORDS = ("a professional female dancer dancing K-pop in an advanced dance setting in a studio with a white "
          "background, captured from front view").replace(",", " ").split()


def tokenizer_vocab() -> list[tuple[str, float]]:
    """T5-style Unigram vocabulary: <pad>=0, </s>=1, <unk>=2, then word and character pieces with log-probs."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -4.0) for word in dict.fromkeys(_WORDS)]
    pieces += [(chr(code), -8.0) for code in range(33, 127)]
    pieces += [("▁" + chr(code), -9.0) for code in range(33, 127)]
    return pieces


def build(weights_dir: Path) -> Path:
    """Write `weights_dir/mochi-1-preview/` (deterministic) and return it."""
    import torch
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    root = Path(weights_dir) / FOLDER
    tokenizer = T5TokenizerFast(vocab=tokenizer_vocab(), extra_ids=0, model_max_length=512)

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(**TRANSFORMER_CONFIG)
    with torch.no_grad():
        transformer.pos_frequencies.normal_(0.0, POS_FREQUENCY_STD)
    torch.manual_seed(1)
    vae = AutoencoderKLMochi(**VAE_CONFIG)
    torch.manual_seed(2)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **T5_CONFIG)).eval()

    pipeline = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipeline.save_pretrained(root, safe_serialization=True)
    # The Hub's transformer is sharded with an index; shard the tiny one too so loaders take that path.
    for path in (root / "transformer").glob("diffusion_pytorch_model*"):
        path.unlink()
    transformer.save_pretrained(root / "transformer", safe_serialization=True, max_shard_size="200KB")
    _update_json(root / "transformer" / "config.json", SAMPLE_SIZE)
    _update_json(root / "model_index.json", {"tokenizer": ["transformers", "T5TokenizerFast"]})  # the Hub's name
    return root


def _update_json(path: Path, entries: dict) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}, indent=2) + "\n")
