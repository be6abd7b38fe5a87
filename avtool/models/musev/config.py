"""What a MuseV UNet is built from: the SD1.5-shaped `unet/config.json` plus the flags upstream's
`load_unet_by_name` passes for each published variant (they override the config file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from avtool.errors import WeightsError

VARIANTS = ("musev", "musev_referencenet", "musev_referencenet_pose")

_REFERENCENET_FLAGS = {
    "need_transformer_in": False,
    "use_anivv1_cfg": True,
    "resnet_2d_skip_time_act": True,
    "keep_vision_condtion": True,
    "need_refer_emb": True,
    "ip_adapter_cross_attn": True,
}
VARIANT_FLAGS: dict[str, dict[str, bool]] = {
    "musev": {"need_transformer_in": True, "use_anivv1_cfg": False, "resnet_2d_skip_time_act": False,
              "keep_vision_condtion": False, "need_refer_emb": False, "ip_adapter_cross_attn": False},
    "musev_referencenet": _REFERENCENET_FLAGS,
    "musev_referencenet_pose": _REFERENCENET_FLAGS,
}


@dataclass(frozen=True)
class MuseVConfig:
    """Shape and behaviour of a MuseV UNet; field names follow upstream's config.json (typos included)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8  # the number of heads, as in diffusers' SD1.5 configs
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    sample_size: int = 64
    need_transformer_in: bool = True  # a temporal transformer right after conv_in
    use_anivv1_cfg: bool = False  # SiLU on the time and frame embeddings at the top; frame index × motion speed
    resnet_2d_skip_time_act: bool = False  # resnets skip their own SiLU on the (already activated) time embedding
    keep_vision_condtion: bool = False  # the condition frames get a zero time embedding
    need_refer_emb: bool = False  # ReferenceNet features fused into the down path
    ip_adapter_cross_attn: bool = False  # decoupled IP-Adapter keys/values in every spatial cross-attention

    @classmethod
    def for_variant(cls, variant: str, unet_config: Mapping[str, Any] | None = None) -> MuseVConfig:
        """The config of a published variant, from its `unet/config.json` (when given) and upstream's flags."""
        if variant not in VARIANT_FLAGS:
            raise WeightsError(f"unknown MuseV variant {variant!r} (known: {', '.join(VARIANTS)})")
        base = cls.from_unet_config(unet_config) if unet_config is not None else cls()
        return replace(base, **VARIANT_FLAGS[variant])

    @classmethod
    def from_unet_config(cls, unet_config: Mapping[str, Any]) -> MuseVConfig:
        """The fields of a diffusers-style UNet config.json that this dataclass knows; the rest are ignored."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in unet_config.items() if key in known}
        if "block_out_channels" in values:
            values["block_out_channels"] = tuple(values["block_out_channels"])
        if isinstance(values.get("attention_head_dim"), (list, tuple)):
            raise WeightsError("MuseV expects one attention_head_dim for all blocks, found a list")
        return cls(**values)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4
