"""D2M's model sizes as plain dataclasses: no torch here, so a training config's sizes are checked before torch loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class MOTConfig:
    """Defaults are the D2M run's: 219-d AIST++ frames, 356 of them (5.93 s at 60 fps), 10 AIST++ genres."""

    dim: int = 219
    depth: int = 6
    heads: int = 12
    dim_head: int = 64
    mlp_dim: int = 1024
    num_classes: int = 10
    num_frames: int = 356
    dropout: float = 0.1
    emb_dropout: float = 0.1
    pool: str = "mean"

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")


@dataclass(frozen=True)
class UNetConfig:
    """`UNetV0`'s arguments (dim 1). Defaults are D2M's. Per-level sequences all have one entry per level;
    `attentions` / `cross_attentions` are 0 or 1 per level; `context_channels[d] > 0` adds a 1x1 conv per item at
    level d that mixes in an injected tensor (a `DiffusionAE` decoder's latent); `embedding_features` is the
    cross-attention context width (None when no level has cross-attention)."""

    in_channels: int = 32
    channels: Sequence[int] = (128, 256, 512, 512, 1024, 1024)
    factors: Sequence[int] = (1, 2, 2, 2, 2, 2)
    items: Sequence[int] = (2, 2, 2, 2, 4, 4)
    attentions: Sequence[int] = (0, 0, 1, 1, 1, 1)
    cross_attentions: Sequence[int] = (1, 1, 1, 1, 1, 1)
    context_channels: Sequence[int] | None = None
    attention_heads: int = 8
    attention_features: int = 64
    embedding_features: int | None = 219
    resnet_groups: int = 8
    use_modulation: bool = True
    modulation_features: int = 1024
    out_channels: int | None = None

    def __post_init__(self) -> None:
        levels = len(self.channels)
        if self.context_channels is None:
            object.__setattr__(self, "context_channels", (0,) * levels)
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Sequence):
                object.__setattr__(self, field.name, tuple(value))
                if len(value) != levels:
                    raise ValueError(f"{field.name} has {len(value)} entries for {levels} levels")
        if any(n not in (0, 1) for n in (*self.attentions, *self.cross_attentions)):
            raise ValueError("attentions and cross_attentions take 0 or 1 per level")
        if any(self.cross_attentions) and self.embedding_features is None:
            raise ValueError("cross-attention needs embedding_features")
        if min(self.factors) < 1:
            raise ValueError(f"factors must be ≥ 1, got {self.factors}")

    def level_io(self, depth: int) -> tuple[int, int]:
        """(input, output) width of level `depth`."""
        if depth == 0:
            return self.in_channels, self.out_channels or self.in_channels
        return self.channels[depth - 1], self.channels[depth - 1]
