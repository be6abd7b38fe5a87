"""Tiny random TempoTokens in the real layouts: `zeroscope_v2_576w/` (a diffusers TextToVideoSDPipeline folder),
`beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt` and `tempotokens/<dataset>/learned_embeds.pth`.

Structure as the real models (UNet3D with cross-attention and temporal layers, an 8x VAE, a CLIP text encoder
and BPE tokenizer, the BEATs encoder, the mapper) with widths cut down. The UNet's native size is 64 px
(`sample_size` 8), so `avtool tokens` on these weights makes 64x64 videos. diffusers zero-initialises the
UNet's temporal layers; here they are random so that frames interact as in a trained model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from avtool.weights.layout import BEATS_FOLDER, MAPPER_FILE, MAPPERS, TEMPOTOKENS_FOLDER, ZEROSCOPE_FOLDER
from avtool.weights.tiny.folders import write_pipeline_folder

TEXT_WIDTH = 32
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 8,
}
VAE_CONFIG = {  # four blocks: the real 8x spatial scale
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
}
TEXT_CONFIG = {"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "max_position_embeddings": 77, "projection_dim": TEXT_WIDTH, "hidden_act": "gelu"}
SCHEDULER_CONFIG = {  # zeroscope's (text-to-video-ms-1.7b's) scheduler_config.json
    "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
MAPPER_HIDDEN = 48


def build(weights_dir: Path) -> list[Path]:
    """Write the three folders under `weights_dir` (deterministic) and return them."""
    from avtool.weights.tiny.beats import write_tiny_beats

    root = Path(weights_dir)
    zeroscope = write_zeroscope(root / ZEROSCOPE_FOLDER)
    beats_file = write_tiny_beats(root / BEATS_FOLDER)
    for seed, mapper in enumerate(MAPPERS):
        write_mapper(root / TEMPOTOKENS_FOLDER / mapper / MAPPER_FILE, beats_file, seed)
    return [zeroscope, root / BEATS_FOLDER, root / TEMPOTOKENS_FOLDER]


def write_zeroscope(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**UNET_CONFIG)
    with torch.no_grad():  # diffusers zero-initialises the temporal layers' outputs: make them act
        for name, parameter in unet.named_parameters():
            if not parameter.any() and name.endswith("weight") and ("temp" in name or "transformer_in" in name):
                parameter.normal_(0.0, 0.05)
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                                **TEXT_CONFIG)).eval()
    components = {"scheduler": DDIMScheduler.from_config(SCHEDULER_CONFIG), "text_encoder": text_encoder,
                  "tokenizer": tokenizer, "unet": unet, "vae": vae}
    write_pipeline_folder(folder, "TextToVideoSDPipeline", components, saved=("tokenizer",))
    return folder


def write_clip_tokenizer(folder: Path, words: Iterable[str] = ()):
    """A byte-level CLIP BPE tokenizer in `folder`: every word spelled by characters, except `words` (lower-case
    ASCII letters and digits), which merge into one token each, as the real tokenizer's common words do."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    characters = [_byte_char(b) for b in range(256)]
    tokens = [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
    merges = []
    for word in dict.fromkeys(w for w in words if len(w) > 1 and w.isascii() and w.isalnum()):
        merged = word[0]
        for piece in [*word[1:-1], word[-1] + "</w>"]:  # h e l l o</w> -> he, hel, hell, hello</w>
            merges.append((merged, piece))
            merged += piece
            tokens.append(merged)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _byte_char(byte: int) -> str:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))


def write_mapper(path: Path, beats_file: Path, seed: int) -> Path:
    """A random mapper whose input is the tiny BEATs' concatenated layers and whose output is the text width."""
    import torch

    from avtool.models.beats import BEATsConfig
    from avtool.models.tempotokens import AudioTokenMapper

    checkpoint = torch.load(beats_file, weights_only=True)
    beats = BEATsConfig.from_cfg(checkpoint["cfg"])
    torch.manual_seed(10 + seed)
    mapper = AudioTokenMapper(beats.encoder_layers * beats.encoder_embed_dim, MAPPER_HIDDEN, TEXT_WIDTH)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mapper.state_dict(), path)
    return path
