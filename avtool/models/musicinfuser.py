"""MusicInfuser on diffusers' Mochi: the audio adapter modules, the adapter-checkpoint converter, the loader.

The published `musicinfuser.safetensors` uses genmo's names: LoRA on the packed `qkv_x/qkv_y` and
`proj_x/proj_y` projections of every block (keys without `.weight`, rank/alpha in metadata `kwargs`),
plus `audio_projection.*` and `audio_cross_attn_blocks.{j}.*`. We split the packed q/k/v rows onto
diffusers' separate projections, merge the LoRA into the base weights in fp32, and keep the audio
modules under their upstream names so their keys load verbatim.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import MochiTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from avtool.errors import WeightsError
from avtool.models.mochi import fp32_parameter_names
from avtool.weights.loading import shortlist

AUDIO_CROSS_ATTN_LAYERS = (6, 7, 8, 9, 10, 21, 34, 35, 36, 38, 39, 43, 44, 45, 46, 47)
AUDIO_CROSS_ATTN_HEADS = 8
# avtool-only metadata entry: tiny checkpoints (fewer than 48 blocks) list their blocks; absent → the upstream list.
LAYERS_METADATA_KEY = "avtool_audio_cross_attn_layers"
# avtool-only metadata entry: an adapter trained with `audio_attention_window` (absent → upstream's full attention).
WINDOW_METADATA_KEY = "avtool_audio_attention_window"

_LORA_KEY = re.compile(r"blocks\.(\d+)\.attn\.(qkv_x|qkv_y|proj_x|proj_y)\.lora_([AB])")
_LORA_TARGETS = {  # genmo projection -> diffusers Linear(s) in `transformer_blocks.{i}.attn1`, packed rows in order
    "qkv_x": ("to_q", "to_k", "to_v"),
    "qkv_y": ("add_q_proj", "add_k_proj", "add_v_proj"),
    "proj_x": ("to_out.0",),
    "proj_y": ("to_add_out",),
}
_LORA_SOURCE = {name: projection for projection, names in _LORA_TARGETS.items() for name in names}
_DIFFUSERS_LORA_TARGET = re.compile(r"transformer_blocks\.(\d+)\.attn1\.(" + "|".join(map(re.escape, _LORA_SOURCE)) + r")\.weight")
_AUDIO_PREFIXES = ("audio_projection.", "audio_cross_attn_blocks.")
_MOCHI_INIT_KEYS = frozenset(inspect.signature(MochiTransformer3DModel.__init__).parameters) - {"self"}


class AudioProjector(nn.Module):
    """wav2vec2 features (B, T_a, audio_dim) → (B, num_frames, dim): MLP, then nearest resampling in time."""

    def __init__(self, audio_dim: int, dim: int) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(audio_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        projected = self.projection(audio)
        if projected.shape[1] == num_frames:
            return projected
        return F.interpolate(projected.transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)


class AudioCrossAttention(nn.Module):
    """Residual cross-attention from video tokens to audio frames: no positions, no norms, and (upstream) no mask."""

    def __init__(self, dim: int, num_heads: int = AUDIO_CROSS_ATTN_HEADS) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)  # zero-initialised output: a fresh adapter leaves the DiT unchanged
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden_states: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` (tokens, audio frames) bool, True where a token may attend; None: every token sees every frame."""

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.to_q(hidden_states)), heads(self.to_k(audio)), heads(self.to_v(audio)), attn_mask=mask
        )
        return hidden_states + self.to_out(attended.transpose(1, 2).flatten(2))


def audio_window_mask(num_frames: int, tokens_per_frame: int, window: int, device: torch.device) -> torch.Tensor:
    """(num_frames·tokens_per_frame, num_frames) bool: a (frame-major) video token may attend to the audio frames at
    most `window` latent frames from its own."""
    frame = torch.arange(num_frames, device=device)
    near = (frame[:, None] - frame[None, :]).abs() <= window
    return near.repeat_interleave(tokens_per_frame, dim=0)


class MusicInfuserTransformer(MochiTransformer3DModel):
    """Mochi's DiT with an audio projector and cross-attention layers applied after the listed blocks.

    `audio_dim=None` builds the plain DiT (no audio modules). `sample_height/sample_width` are the default
    latent size (×8 px); Mochi-1's 60x106 (480x848 px) unless the weights' config says otherwise.

    `audio_attention_window` (avtool's option, off in upstream's model): each video token attends only to the audio
    frames within that many latent frames of its own. Upstream's cross-attention has no positions at all, so which
    audio goes with which frame must come from time the DiT's hidden states carry. In a DiT that carries none (the
    tiny one: `bench/train.py` reads the frame out of them at chance) every token gets the same mix of the whole clip.
    """

    def __init__(
        self,
        audio_dim: int | None = None,
        audio_cross_attn_layers: tuple[int, ...] = AUDIO_CROSS_ATTN_LAYERS,
        sample_height: int = 60,
        sample_width: int = 106,
        audio_attention_window: int | None = None,
        **mochi_config,
    ) -> None:
        super().__init__(**mochi_config)
        self.register_to_config(audio_dim=None, audio_cross_attn_layers=(), audio_attention_window=None,
                                sample_height=sample_height, sample_width=sample_width)
        self.register_module("audio_projection", None)
        self.audio_cross_attn_blocks = nn.ModuleList()
        self._audio_block_after: dict[int, int] = {}
        if audio_dim is not None:
            self.add_audio_adapter(audio_dim, audio_cross_attn_layers, audio_attention_window)

    def add_audio_adapter(self, audio_dim: int, layers: tuple[int, ...] = AUDIO_CROSS_ATTN_LAYERS,
                          attention_window: int | None = None) -> None:
        """Attach a freshly initialised audio projector and cross-attention after `layers`, as upstream creates them
        (default init; each cross-attention's output projection zero, so the DiT's output is unchanged)."""
        layers = tuple(layers)
        if any(not 0 <= i < len(self.transformer_blocks) for i in layers):
            raise ValueError(f"audio cross-attention layers {layers} outside the {len(self.transformer_blocks)} blocks")
        if attention_window is not None and attention_window < 0:
            raise ValueError(f"audio attention window {attention_window} is negative")
        self.register_to_config(audio_dim=audio_dim, audio_cross_attn_layers=layers, audio_attention_window=attention_window)
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        self.audio_projection = AudioProjector(audio_dim, dim)
        self.audio_cross_attn_blocks = nn.ModuleList(AudioCrossAttention(dim) for _ in layers)
        self._audio_block_after = {block: j for j, block in enumerate(layers)}

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """Predict the flow (x0 − ε) for latents (B, C, T, H, W); audio_features (B or 1, T_a, audio_dim) or None."""
        batch, _, num_frames, height, width = hidden_states.shape
        p = self.config.patch_size

        temb, encoder_hidden_states = self.time_embed(
            timestep, encoder_hidden_states, encoder_attention_mask, hidden_dtype=hidden_states.dtype
        )
        tokens = self.patch_embed(hidden_states.permute(0, 2, 1, 3, 4).flatten(0, 1))
        tokens = tokens.unflatten(0, (batch, -1)).flatten(1, 2)  # (B, T*H/p*W/p, dim), frame-major
        rotary = self.rope(self.pos_frequencies, num_frames, height // p, width // p,
                           device=tokens.device, dtype=torch.float32)

        audio = mask = None
        if audio_features is not None:
            if self.audio_projection is None:
                raise ValueError("audio_features given to a transformer built without the audio adapter")
            audio = self.audio_projection(audio_features.to(self.audio_projection.projection[0].weight.dtype), num_frames)
            audio = audio.expand(batch, -1, -1)  # one clip serves both CFG branches
            if self.config.audio_attention_window is not None:
                mask = audio_window_mask(num_frames, tokens.shape[1] // num_frames, self.config.audio_attention_window,
                                         tokens.device)

        for i, block in enumerate(self.transformer_blocks):
            block_inputs = (tokens, encoder_hidden_states, temb, encoder_attention_mask, rotary)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens, encoder_hidden_states = self._gradient_checkpointing_func(block, *block_inputs)
            else:
                tokens, encoder_hidden_states = block(*block_inputs)
            if audio is not None and i in self._audio_block_after:
                tokens = self.audio_cross_attn_blocks[self._audio_block_after[i]](tokens, audio.to(tokens.dtype), mask)

        tokens = self.proj_out(self.norm_out(tokens, temb))
        tokens = tokens.reshape(batch, num_frames, height // p, width // p, p, p, -1)
        output = tokens.permute(0, 6, 1, 2, 4, 3, 5).reshape(batch, -1, num_frames, height, width)
        return Transformer2DModelOutput(sample=output) if return_dict else output


# ---------------------------------------------------------------------------------------------------------------
# Adapter checkpoint conversion


@dataclass
class LoraFactors:
    """One diffusers Linear's low-rank update: ΔW = up @ down · scale."""

    down: torch.Tensor  # (rank, in_features)
    up: torch.Tensor  # (out_features, rank)
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.up.shape[0], self.down.shape[1])

    def delta(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * self.scale


@dataclass
class ConvertedAdapter:
    """An upstream adapter state dict in diffusers terms."""

    lora: dict[str, LoraFactors]  # diffusers weight name, e.g. "transformer_blocks.3.attn1.to_k.weight"
    audio: dict[str, torch.Tensor]  # audio_projection.* / audio_cross_attn_blocks.*, upstream names
    audio_cross_attn_layers: tuple[int, ...]
    audio_attention_window: int | None  # avtool's option (WINDOW_METADATA_KEY); None: upstream's full attention
    used_keys: set[str] = field(default_factory=set)  # source keys consumed by lora or audio
    unused_keys: list[str] = field(default_factory=list)  # source keys that fit neither, sorted

    @property
    def audio_dim(self) -> int:
        return self.audio["audio_projection.projection.0.weight"].shape[1]


def convert_adapter(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> ConvertedAdapter:
    """Map a genmo-layout MusicInfuser adapter onto diffusers names (tensors may live on the meta device).

    Raises WeightsError for unreadable LoRA settings or LoRA shapes that contradict them. Keys that fit no
    pattern, and LoRA halves without their partner, are left in `unused_keys` for `check_adapter` to report.
    """
    metadata = metadata or {}
    try:
        kwargs = json.loads(metadata["kwargs"])
        ranks = {"qkv": int(kwargs["qkv_proj_lora_rank"]), "proj": int(kwargs["out_proj_lora_rank"])}
        scales = {"qkv": kwargs["qkv_proj_lora_alpha"] / ranks["qkv"], "proj": kwargs["out_proj_lora_alpha"] / ranks["proj"]}
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise WeightsError(f"adapter: metadata 'kwargs' lacks valid LoRA rank/alpha ({error!r})") from error
    try:
        layers = tuple(int(i) for i in json.loads(metadata.get(LAYERS_METADATA_KEY, json.dumps(AUDIO_CROSS_ATTN_LAYERS))))
    except (TypeError, ValueError) as error:
        raise WeightsError(f"adapter: metadata '{LAYERS_METADATA_KEY}' is not a list of block indices ({error!r})") from error
    window = metadata.get(WINDOW_METADATA_KEY)
    if window is not None and not (window.isdigit() and window.isascii()):
        raise WeightsError(f"adapter: metadata '{WINDOW_METADATA_KEY}' is {window!r}, not a whole number of latent frames")
    window = None if window is None else int(window)

    pairs: dict[tuple[int, str], dict[str, str]] = {}
    audio = {key: tensor for key, tensor in state_dict.items() if key.startswith(_AUDIO_PREFIXES)}
    for key in state_dict:
        if match := _LORA_KEY.fullmatch(key):
            pairs.setdefault((int(match[1]), match[2]), {})[match[3]] = key

    lora: dict[str, LoraFactors] = {}
    used = set(audio)
    for (block, projection), halves in sorted(pairs.items()):
        if len(halves) < 2:
            continue
        down, up = state_dict[halves["A"]], state_dict[halves["B"]]
        kind = "qkv" if projection.startswith("qkv") else "proj"
        targets = _LORA_TARGETS[projection]
        if down.shape[0] != ranks[kind] or up.shape[1] != ranks[kind] or up.shape[0] % len(targets):
            raise WeightsError(f"adapter: blocks.{block}.attn.{projection}.lora_A/B shapes {tuple(down.shape)}/"
                               f"{tuple(up.shape)} do not fit rank {ranks[kind]} with {len(targets)} packed projections")
        for name, rows in zip(targets, up.chunk(len(targets), dim=0), strict=True):
            lora[f"transformer_blocks.{block}.attn1.{name}.weight"] = LoraFactors(down, rows, scales[kind])
        used.update(halves.values())
    return ConvertedAdapter(lora, audio, layers, window, used, sorted(set(state_dict) - used))


def lora_projections(model: nn.Module) -> dict[str, list[str]]:
    """The inverse map of `convert_adapter`'s LoRA: genmo's name of each LoRA-carrying projection of `model`,
    `blocks.{i}.attn.{qkv_x|qkv_y|proj_x|proj_y}`, with the diffusers Linears it packs, in row order.

    A block without `to_add_out` (the last one: it does not update the text stream) has no `proj_y`, as upstream.
    """
    modules = {name for name, _ in model.named_modules()}
    projections: dict[str, list[str]] = {}
    for i in range(len(model.transformer_blocks)):
        for projection, names in _LORA_TARGETS.items():
            paths = [f"transformer_blocks.{i}.attn1.{name}" for name in names]
            if all(path in modules for path in paths):
                projections[f"blocks.{i}.attn.{projection}"] = paths
    return projections


def adapter_metadata(lora_kwargs: dict[str, int | float], audio_cross_attn_layers: tuple[int, ...],
                     audio_attention_window: int | None = None) -> dict[str, str]:
    """An adapter file's safetensors metadata, as upstream's `train.py` writes it: `kwargs`, the JSON of the
    model's LoRA settings; plus avtool's layer list when it is not upstream's (tiny DiTs) and its attention window
    when there is one."""
    metadata = {"kwargs": json.dumps(lora_kwargs)}
    if tuple(audio_cross_attn_layers) != AUDIO_CROSS_ATTN_LAYERS:
        metadata[LAYERS_METADATA_KEY] = json.dumps(list(audio_cross_attn_layers))
    if audio_attention_window is not None:
        metadata[WINDOW_METADATA_KEY] = str(audio_attention_window)
    return metadata


def check_adapter(adapter: ConvertedAdapter, model: nn.Module) -> None:
    """Raise WeightsError naming the first offending (upstream-named) keys unless `adapter` fits `model` exactly.

    Every LoRA-able attention projection of the model needs its LoRA pair, every audio parameter a tensor,
    all of the model's shapes, and no key of the file may be left over.
    """
    model_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected: set[str] = {key for key in model_shapes if key.startswith(_AUDIO_PREFIXES)}
    for key in model_shapes:
        if match := _DIFFUSERS_LORA_TARGET.fullmatch(key):
            source = f"blocks.{match[1]}.attn.{_LORA_SOURCE[match[2]]}"
            expected.update((f"{source}.lora_A", f"{source}.lora_B"))
    present = adapter.used_keys | set(adapter.unused_keys)
    offered = {key: tuple(factors.shape) for key, factors in adapter.lora.items()}
    offered.update({key: tuple(tensor.shape) for key, tensor in adapter.audio.items()})
    wrong_shape = [f"{key} {shape} != {model_shapes[key]}" for key, shape in sorted(offered.items())
                   if key in model_shapes and shape != model_shapes[key]]
    problems = ", ".join(filter(None, (shortlist("unexpected keys", sorted(present - expected)),
                                       shortlist("missing keys", sorted(expected - present)), shortlist("wrong shapes", wrong_shape))))
    if problems:
        raise WeightsError(f"adapter does not fit the transformer: {problems}")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_dance_transformer(
    transformer_dir: Path, shards: list[Path], adapter_path: Path | None, device: str, dtype: torch.dtype
) -> MusicInfuserTransformer:
    """Mochi's DiT (config in `transformer_dir`, tensors in `shards`) with the MusicInfuser adapter merged and attached.

    The LoRA update is added to each base weight in fp32 and the sum cast to `dtype` once; the parameters genmo
    keeps in fp32 (`fp32_parameter_names`) stay fp32. Unexpected or missing keys and wrong shapes raise
    WeightsError (exit 3) naming the first ones.
    """
    converted = _read_adapter(adapter_path) if adapter_path is not None else None
    config_path = transformer_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{config_path}: not valid JSON ({error})") from error
    mochi_config = {key: value for key, value in config.items() if key in _MOCHI_INIT_KEYS}
    sample_size = {key: config[key] for key in ("sample_height", "sample_width") if key in config}
    try:
        with torch.device("meta"):
            model = MusicInfuserTransformer(
                audio_dim=converted.audio_dim if converted else None,
                audio_cross_attn_layers=converted.audio_cross_attn_layers if converted else (),
                audio_attention_window=converted.audio_attention_window if converted else None,
                **sample_size,
                **mochi_config,
            )
        if converted:
            check_adapter(converted, model)
    except (WeightsError, ValueError, TypeError) as error:
        source = adapter_path if converted else config_path
        raise WeightsError(f"{source}: {getattr(error, 'message', error)}") from error

    keep_fp32 = fp32_parameter_names(model)
    dtypes = {key: torch.float32 if key in keep_fp32 else dtype for key in model.state_dict()}
    state = _read_base_state(transformer_dir, shards, model, converted, dtypes)
    if converted:
        state.update({key: tensor.to(dtypes[key]) for key, tensor in converted.audio.items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def _read_adapter(path: Path) -> ConvertedAdapter:
    from safetensors import safe_open

    with _reading(path), safe_open(path, framework="pt") as file:
        metadata = file.metadata()
        state = {key: file.get_tensor(key) for key in file.keys()}
    try:
        converted = convert_adapter(state, metadata)
        if "audio_projection.projection.0.weight" not in converted.audio:
            raise WeightsError("adapter: missing key audio_projection.projection.0.weight")
    except WeightsError as error:
        raise WeightsError(f"{path}: {error.message}") from error
    return converted


def _read_base_state(
    transformer_dir: Path, shards: list[Path], model: nn.Module, adapter: ConvertedAdapter | None,
    dtypes: dict[str, torch.dtype],
) -> dict[str, torch.Tensor]:
    """The base DiT's tensors from the shards, checked against `model`, LoRA merged in fp32, each cast to `dtypes[key]`."""
    from safetensors import safe_open

    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()
                if not key.startswith(_AUDIO_PREFIXES)}
    state: dict[str, torch.Tensor] = {}
    seen, unexpected, wrong_shape = set(), [], []
    for shard in shards:
        if shard.name.endswith(".json"):  # the shard index
            continue
        with _reading(shard), safe_open(shard, framework="pt") as file:
            for key in file.keys():
                seen.add(key)
                if key not in expected:
                    unexpected.append(key)
                    continue
                tensor = file.get_tensor(key)
                if tuple(tensor.shape) != expected[key]:
                    wrong_shape.append(f"{key} {tuple(tensor.shape)} != {expected[key]}")
                elif adapter and key in adapter.lora:
                    state[key] = (tensor.float() + adapter.lora[key].delta()).to(dtypes[key])
                else:
                    state[key] = tensor.to(dtypes[key])
    problems = ", ".join(filter(None, (shortlist("unexpected keys", sorted(unexpected)),
                                       shortlist("missing keys", sorted(set(expected) - seen)), shortlist("wrong shapes", wrong_shape))))
    if problems:
        raise WeightsError(f"{transformer_dir}: checkpoint does not fit MochiTransformer3DModel: {problems}")
    return state


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a failure to read a safetensors file into WeightsError naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: unreadable safetensors file ({error})") from error


# ---------------------------------------------------------------------------------------------------------------
# Audio features


class Wav2VecEncoder:
    """wav2vec2-base-960h `last_hidden_state` for a 16 kHz mono wave, normalised as upstream's processor does."""

    def __init__(self, model: nn.Module, feature_extractor, device: str) -> None:
        self.model, self.feature_extractor, self.device = model, feature_extractor, device

    @classmethod
    def from_folder(cls, folder: Path, device: str = "cpu") -> Wav2VecEncoder:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
        # the Hub checkpoint is a CTC model; its encoder without the CTC head is what upstream runs
        model = Wav2Vec2ForCTC.from_pretrained(folder, dtype=torch.float32).wav2vec2.to(device).eval()
        return cls(model, feature_extractor, device)

    @torch.no_grad()
    def __call__(self, wave_16k: np.ndarray) -> torch.Tensor:
        """(1, T_a, C) float32 features on the encoder's device; T_a is the conv stack's output length."""
        inputs = self.feature_extractor(np.asarray(wave_16k, dtype=np.float32), sampling_rate=16000,
                                        return_tensors="pt", return_attention_mask=False)
        return self.model(inputs.input_values.to(self.device)).last_hidden_state
