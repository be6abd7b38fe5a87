"""Tiny random BEATs in the published checkpoint's layout: `{'cfg', 'model', 'label_dict'}` saved with torch.save.

Every upstream cfg key is present; widths are cut down, the input side (16×16 patches of a 128-bin fbank) is the real
one, so token counts per second are the real ones. The state dict lists layer 0's relative-position table under every
layer's name, one tensor, as upstream's `state_dict()` does.
"""

from __future__ import annotations

from pathlib import Path

from avtool.weights.layout import BEATS_FILE

CFG = {  # upstream BEATsConfig's keys; shape values tiny, the others upstream's defaults (max_distance: the iter3 value)
    "input_patch_size": 16, "embed_dim": 16, "conv_bias": False, "encoder_layers": 2, "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "activation_fn": "gelu", "layer_wise_gradient_decay_ratio": 1.0,
    "layer_norm_first": False, "deep_norm": True, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0, "dropout_input": 0.0, "conv_pos": 8, "conv_pos_groups": 4, "relative_position_embedding": True,
    "num_buckets": 32, "max_distance": 800, "gru_rel_pos": True, "finetuned_model": True, "predictor_dropout": 0.1,
    "predictor_class": 5,
}
SEED = 0


def write_tiny_beats(folder: Path) -> Path:
    """Write `folder/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt` (deterministic, about 200 KB) and return its path."""
    import torch

    from avtool.models.beats import BEATs, BEATsConfig

    model = BEATs(BEATsConfig.from_cfg(CFG))
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # named once each: the shared table is drawn once
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith(("layer_norm.weight", "grep_a", "weight_g")):
                parameter.copy_(1.0 + 0.1 * noise)
            elif parameter.ndim == 1:
                parameter.copy_(0.02 * noise)
            else:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
    path = Path(folder) / BEATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    label_dict = {index: f"/m/tiny{index}" for index in range(CFG["predictor_class"])}
    torch.save({"cfg": dict(CFG), "model": model.state_dict(), "label_dict": label_dict}, path)
    return path
