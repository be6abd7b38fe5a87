"""BEATs (microsoft/unilm `beats/`), TempoTokens' audio encoder: inference only, upstream's state-dict names.

Normalised fbank (B, frames, 128) → 16×16 patches (a conv with stride 16; leftover frames are dropped) → tokens in
upstream's (time, frequency) order, token `t * 8 + f` for time patch t and frequency patch f (2 s of 16 kHz audio:
198 frames → 12 × 8 = 96 tokens) → LayerNorm → `post_extract_proj` → + GELU(weight-normed positional conv) →
LayerNorm → post-LN deep-norm transformer layers with a gated relative position bias, whose table (layer 0's) every
layer shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from avtool.errors import WeightsError
from avtool.models.beats.fbank import beats_input, num_frames
from avtool.weights.loading import shortlist

# Settings this implementation fixes; upstream's cfg must carry these values.
FIXED_CFG = {"layer_norm_first": False, "relative_position_embedding": True, "gru_rel_pos": True, "activation_fn": "gelu"}
SHARED_TABLE = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


@dataclass(frozen=True)
class BEATsConfig:
    """The values of upstream's cfg dict that set shapes or change the forward pass (upstream's names)."""

    input_patch_size: int
    embed_dim: int
    conv_bias: bool
    encoder_layers: int
    encoder_embed_dim: int
    encoder_ffn_embed_dim: int
    encoder_attention_heads: int
    conv_pos: int
    conv_pos_groups: int
    num_buckets: int
    max_distance: int
    deep_norm: bool
    finetuned_model: bool
    predictor_class: int

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> BEATsConfig:
        """Read upstream's `checkpoint['cfg']`; a missing key, a wrong type or a setting not implemented here is a
        WeightsError."""
        if not isinstance(cfg, Mapping):
            raise WeightsError(f"BEATs cfg is a {type(cfg).__name__}, not a dict")
        missing = [key for key in [field.name for field in fields(cls)] + list(FIXED_CFG) if key not in cfg]
        if missing:
            raise WeightsError(f"BEATs cfg lacks {', '.join(missing)}")
        for key, value in FIXED_CFG.items():
            if cfg[key] != value:
                raise WeightsError(f"BEATs cfg {key}={cfg[key]!r} is not supported (only {value!r})")
        for field in fields(cls):
            value = cfg[field.name]
            if field.type == "bool" and not isinstance(value, bool):
                raise WeightsError(f"BEATs cfg {field.name}={value!r} is not a bool")
            if field.type == "int" and (type(value) is not int or value <= 0):
                raise WeightsError(f"BEATs cfg {field.name}={value!r} is not a positive int")
        config = cls(**{field.name: cfg[field.name] for field in fields(cls)})
        for divisor in ("encoder_attention_heads", "conv_pos_groups"):
            if config.encoder_embed_dim % cfg[divisor]:
                raise WeightsError(f"BEATs cfg encoder_embed_dim={config.encoder_embed_dim} is not divisible by "
                                   f"{divisor}={cfg[divisor]}")
        return config


class WeightNormConv1d(nn.Module):
    """Grouped same-length Conv1d with weight `weight_g * weight_v / ‖weight_v‖`, the norm taken per kernel tap:
    legacy `torch.nn.utils.weight_norm(dim=2)`, whose parameter names the checkpoint keeps."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        std = 1 / math.sqrt(kernel_size * channels)
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel_size) * std)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))
        padding = self.weight_v.shape[-1] // 2
        # upstream pads k//2 on both sides and drops the last step for an even kernel: the input's length again
        return F.conv1d(x, weight, self.bias, padding=padding, groups=self.groups)[..., : x.shape[-1]]


def relative_position_buckets(length: int, num_buckets: int, max_distance: int,
                              device: torch.device | None = None) -> torch.Tensor:
    """Bucket (length, length) of each key − query offset, T5 style: half the buckets per direction (positive offsets in
    the upper half), one bucket per distance below a quarter of the buckets, log-spaced beyond up to `max_distance`,
    the rest in the last bucket. Float32 steps as upstream's, since the log is truncated to an integer."""
    position = torch.arange(length, device=device)
    offset = position[None, :] - position[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    spread = torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + spread.long()).clamp_max(half - 1)
    return torch.where(distance < exact, distance, far) + (offset > 0).long() * half


class RelativeAttention(nn.Module):
    """Self-attention whose logits get the relative position bias scaled per query and head by a gate computed from
    the query (`grep_linear`, `grep_a`): bias × (a · (b · grep_a − 1) + 2)."""

    def __init__(self, dim: int, heads: int, table: nn.Embedding) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.grep_linear = nn.Linear(dim // heads, 8)
        self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        self.relative_attention_bias = table

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim), position_bias (heads, T, T) → (B, T, dim)."""
        batch, length, dim = x.shape
        q, k, v = (project(x).view(batch, length, self.heads, -1).transpose(1, 2)
                   for project in (self.q_proj, self.k_proj, self.v_proj))
        gates = torch.sigmoid(self.grep_linear(q).view(batch, self.heads, length, 2, 4).sum(-1))
        gate_a, gate_b = gates.chunk(2, dim=-1)
        bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * position_bias
        # upstream scales q by 1/32 and subtracts each row's max before scaling back (fp16 headroom): same softmax
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    """Post-LN block with DeepNet residual scaling: x = LN(α·x + attn(x)); x = LN(α·x + fc2(gelu(fc1(x))))."""

    def __init__(self, config: BEATsConfig, table: nn.Embedding) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = RelativeAttention(dim, config.encoder_attention_heads, table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.residual_scale = math.pow(2 * config.encoder_layers, 1 / 4) if config.deep_norm else 1.0

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(x * self.residual_scale + self.self_attn(x, position_bias))
        hidden = F.gelu(self.fc1(x).float()).type_as(x)  # upstream's gelu runs in float32 whatever the dtype
        return self.final_layer_norm(x * self.residual_scale + self.fc2(hidden))


class Encoder(nn.Module):
    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups), nn.GELU())
        table = nn.Embedding(config.num_buckets, config.encoder_attention_heads)
        self.layers = nn.ModuleList(EncoderLayer(config, table) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, T, dim) → each layer's output (B, T, dim), in layer order."""
        x = self.layer_norm(x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2))
        buckets = relative_position_buckets(x.shape[1], self.num_buckets, self.max_distance, x.device)
        # upstream computes the bias once, in layer 0, and hands it on; every layer holds that same table
        position_bias = self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)
        outputs = []
        for layer in self.layers:
            x = layer(x, position_bias)
            outputs.append(x)
        return outputs


class BEATs(nn.Module):
    """The BEATs encoder; `predictor` (the fine-tuned AudioSet head) exists when the cfg has it, to load, and is unused."""

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        self.config = config
        patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, kernel_size=patch, stride=patch, bias=config.conv_bias)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = (nn.Linear(config.embed_dim, config.encoder_embed_dim)
                                  if config.embed_dim != config.encoder_embed_dim else nn.Identity())
        self.encoder = Encoder(config)
        self.predictor = nn.Linear(config.encoder_embed_dim, config.predictor_class) if config.finetuned_model else None

    def forward(self, fbank: torch.Tensor) -> list[torch.Tensor]:
        """Normalised fbank (B, frames, 128) (see `beats_input`) → each layer's output (B, T_tok, dim), in layer order."""
        patch = self.config.input_patch_size
        if fbank.shape[1] < patch:
            raise ValueError(f"BEATs needs at least {patch} fbank frames, got {fbank.shape[1]}")
        patches = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        tokens = patches.flatten(2).transpose(1, 2)  # (B, time × frequency patches, embed_dim), time-major
        return self.encoder(self.post_extract_proj(self.layer_norm(tokens)))

    def extract_layer_features(self, waveform_16k: torch.Tensor) -> torch.Tensor:
        """16 kHz audio (B, N) in [-1, 1] → (B, T_tok, encoder_layers × dim): every layer's output (after its final
        LayerNorm) concatenated along features in layer order, not including the pre-transformer input. This is
        TempoTokens' `beats.extract_features(audio)[1]` ("layers_cat")."""
        weight = self.patch_embedding.weight
        return torch.cat(self(beats_input(waveform_16k.to(weight.device))), dim=-1)


def num_tokens(num_samples: int, patch_size: int = 16, num_mel_bins: int = 128) -> int:
    """How many tokens BEATs makes of `num_samples` samples at 16 kHz (2 s: 96), without loading anything."""
    return num_frames(num_samples) // patch_size * (num_mel_bins // patch_size)


def checked_state_dict(state: Mapping[str, torch.Tensor], model: BEATs,
                       name: str = "BEATs checkpoint") -> dict[str, torch.Tensor]:
    """`state` (upstream's names) checked against `model`, as `model.load_state_dict` wants it.

    The copies of layer 0's relative-position table that upstream's state dict lists for layers 1.. (one tensor under
    several names) may be absent, then filled in; when present they must have its shape and values. Anything else
    unexpected, missing or wrong-shaped is a WeightsError naming the first offending keys.
    """
    layout = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    table = SHARED_TABLE.format(0)
    aliases = {SHARED_TABLE.format(i) for i in range(1, model.config.encoder_layers)}
    unexpected = sorted(set(state) - set(layout))
    missing = sorted(set(layout) - set(state) - aliases)
    wrong = [f"{key} {tuple(state[key].shape)} != {shape}" for key, shape in sorted(layout.items())
             if key in state and tuple(state[key].shape) != shape]
    problems = ", ".join(filter(None, (shortlist("unexpected keys", unexpected), shortlist("missing keys", missing),
                                       shortlist("wrong shapes", wrong))))
    if problems:
        config = model.config
        raise WeightsError(f"{name}: checkpoint does not fit BEATs ({config.encoder_layers} layers, dim "
                           f"{config.encoder_embed_dim}): {problems}")
    differing = sorted(key for key in aliases & set(state)
                       if not state[key].is_meta and not torch.equal(state[key], state[table]))
    if differing:
        raise WeightsError(f"{name}: {differing[0]} differs from {table}, which every layer shares")
    return {**state, **{key: state[table] for key in aliases}}


def load_beats(checkpoint: Mapping, name: str = "BEATs checkpoint") -> BEATs:
    """BEATs in eval mode from an upstream checkpoint dict `{'cfg': dict, 'model': state dict, ...}` (already loaded
    with `weights_only=True`); the model takes the checkpoint's tensors (and their dtype) without copying."""
    if not isinstance(checkpoint, Mapping) or "cfg" not in checkpoint or "model" not in checkpoint:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsError(f"{name}: not a BEATs checkpoint (needs 'cfg' and 'model', found {found})")
    state = checkpoint["model"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"{name}: 'model' is not a flat state dict of tensors")
    try:
        config = BEATsConfig.from_cfg(checkpoint["cfg"])
    except WeightsError as error:
        raise WeightsError(f"{name}: {error.message}") from None
    with torch.device("meta"):
        model = BEATs(config)
    model.load_state_dict(checked_state_dict(state, model, name), assign=True)
    return model.eval()
