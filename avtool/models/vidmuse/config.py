"""The sizes and switches of a VidMuse checkpoint, read from the `xp.cfg` YAML inside `state_dict.bin`.

audiocraft's `loaders.load_lm_model` rebuilds the LM from that Hydra config (`builders.get_lm_model`); we read the
same keys, and refuse (WeightsError) any setting our modules do not reproduce instead of silently running
another architecture. `LMModel` arguments that no config sets (temporal `depth` 2, `dim_head` 64) keep upstream's
defaults unless `transformer_lm` names them, as upstream's `**kwargs` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avtool.errors import WeightsError

T5_WIDTHS = {  # audiocraft T5Conditioner.MODELS_DIMS: the input width of the (unused) output_proj stub
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
    "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
    "google/flan-t5-3b": 1024, "google/flan-t5-11b": 1024,
}
_ABSENT = object()
# (key, value our modules reproduce, upstream default when the key is absent)
_REQUIRED_SETTINGS: tuple[tuple[str, Any, Any], ...] = (
    ("lm_model", "transformer_lm", "transformer_lm"),
    ("transformer_lm.norm", "layer_norm", "layer_norm"),
    ("transformer_lm.norm_first", True, False),
    ("transformer_lm.positional_embedding", "sin", "sin"),
    ("transformer_lm.positional_scale", 1.0, 1.0),
    ("transformer_lm.max_period", 10000, 10000),
    ("transformer_lm.bias_ff", False, True),
    ("transformer_lm.bias_attn", False, True),
    ("transformer_lm.bias_proj", False, True),
    ("transformer_lm.layer_scale", None, None),
    ("transformer_lm.qk_layer_norm", False, False),
    ("transformer_lm.qk_layer_norm_cross", False, False),
    ("transformer_lm.kv_repeat", 1, 1),
    ("transformer_lm.causal", True, True),
    ("transformer_lm.past_context", None, None),
    ("transformer_lm.activation", "gelu", "gelu"),
    ("codebooks_pattern.modeling", "delay", None),
    ("codebooks_pattern.delay.flatten_first", 0, 0),
    ("codebooks_pattern.delay.empty_initial", 0, 0),
    ("fuser.cross_attention_pos_emb", False, False),
    ("video.visual_encoder", "clip", _ABSENT),
    ("video.add_global.if_add_gobal", True, _ABSENT),  # sic: upstream's spelling
)


@dataclass(frozen=True)
class VidMuseConfig:
    """What the modules need from `xp.cfg` (names follow audiocraft's `transformer_lm` / `LMModel` arguments)."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int  # int(hidden_scale * dim)
    num_codebooks: int  # n_q
    card: int  # codebook size; `card` is also the special (BOS / empty) token id
    hidden_scale: float = 4
    temporal_depth: int = 2  # LMModel(depth=2)
    dim_head: int = 64  # LMModel(dim_head=64); the per-frame transformers use `num_heads` heads of this size
    fusion_heads: int = 3  # hard-coded `cross_attention_num_heads = 3` in LMModel.__init__
    text_conditioners: tuple[tuple[str, int], ...] = (("description", 768),)  # (name, T5 width) of each stub
    cfg_coef: float = 3.0
    video_fps: float = 2.0
    train_global_frames: int | None = None  # video.add_global.num_frames at training (the app samples 32)

    @classmethod
    def from_xp_cfg(cls, text: str) -> VidMuseConfig:
        """Parse audiocraft's exported YAML; WeightsError naming the key for anything missing or unsupported."""
        import yaml

        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise WeightsError(f"xp.cfg is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(cfg, dict):
            raise WeightsError(f"xp.cfg is not a mapping (found {type(cfg).__name__})")
        for key, expected, default in _REQUIRED_SETTINGS:
            value = _lookup(cfg, key, default)
            if value is _ABSENT:
                raise WeightsError(f"xp.cfg: missing {key}")
            if value != expected:
                raise WeightsError(f"xp.cfg: {key} = {value!r} is not supported (VidMuse's LM needs {expected!r})")
        if not (_lookup(cfg, "transformer_lm.memory_efficient", False) or _lookup(cfg, "transformer_lm.custom", False)):
            raise WeightsError("xp.cfg: transformer_lm.memory_efficient/custom are both false: the checkpoint would hold "
                               "torch MultiheadAttention names (self_attn.mha.*), which avtool does not read")
        if not (_lookup(cfg, "fuser.cross", []) or _lookup(cfg, "transformer_lm.cross_attention", False)):
            raise WeightsError("xp.cfg: no cross-attention (fuser.cross empty, transformer_lm.cross_attention false), "
                               "but VidMuse's LM reads the video through cross-attention")

        dim = _int(cfg, "transformer_lm.dim")
        n_q = _int(cfg, "transformer_lm.n_q")
        hidden_scale = _number(cfg, "transformer_lm.hidden_scale", 4)
        delays = _lookup(cfg, "codebooks_pattern.delay.delays", None)
        if delays is not None and list(delays) != list(range(n_q)):
            raise WeightsError(f"xp.cfg: codebooks_pattern.delay.delays = {delays!r} is not supported (needs {list(range(n_q))})")
        return cls(
            dim=dim,
            num_heads=_int(cfg, "transformer_lm.num_heads"),
            num_layers=_int(cfg, "transformer_lm.num_layers"),
            ffn_dim=int(hidden_scale * dim),
            num_codebooks=n_q,
            card=_int(cfg, "transformer_lm.card"),
            hidden_scale=hidden_scale,
            temporal_depth=_int(cfg, "transformer_lm.depth", 2),
            dim_head=_int(cfg, "transformer_lm.dim_head", 64),
            text_conditioners=_text_conditioners(cfg),
            cfg_coef=_number(cfg, "classifier_free_guidance.inference_coef", 3.0),
            video_fps=_number(cfg, "video.video_fps", 2),
            train_global_frames=_lookup(cfg, "video.add_global.num_frames", None),
        )

    def decoder_config(self):
        """transformers' `MusicgenDecoderConfig` of the same LM, dropout off, SDPA attention."""
        from transformers import MusicgenDecoderConfig

        config = MusicgenDecoderConfig(
            vocab_size=self.card, hidden_size=self.dim, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, ffn_dim=self.ffn_dim, num_codebooks=self.num_codebooks,
            pad_token_id=self.card, bos_token_id=self.card, activation_function="gelu", scale_embedding=False,
            tie_word_embeddings=False, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        )
        config._attn_implementation = "sdpa"  # VidMuseStep's padded cross-attention mask is boolean
        return config


def _lookup(cfg: dict, key: str, default: Any) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    if isinstance(node, str) and node.startswith("${"):
        raise WeightsError(f"xp.cfg: {key} is an unresolved interpolation {node!r}")
    return node


def _int(cfg: dict, key: str, default: Any = _ABSENT) -> int:
    value = _lookup(cfg, key, default)
    if value is _ABSENT:
        raise WeightsError(f"xp.cfg: missing {key}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WeightsError(f"xp.cfg: {key} = {value!r} is not a positive integer")
    return value


def _number(cfg: dict, key: str, default: float) -> float:
    value = _lookup(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WeightsError(f"xp.cfg: {key} = {value!r} is not a number")
    return value


def _text_conditioners(cfg: dict) -> tuple[tuple[str, int], ...]:
    """The T5 conditioners VidMuse registers as stubs (an `output_proj` only); any other conditioner is refused."""
    conditioners = _lookup(cfg, "conditioners", {}) or {}
    stubs = []
    for name, spec in conditioners.items():
        if name == "args":
            continue
        model = spec.get("model") if isinstance(spec, dict) else None
        t5_name = _lookup(cfg, f"conditioners.{name}.t5.name", None)
        if model != "t5" or t5_name not in T5_WIDTHS:
            raise WeightsError(f"xp.cfg: conditioners.{name} (model {model!r}, t5 {t5_name!r}) is not supported: "
                               "VidMuse checkpoints carry only a T5 conditioner stub")
        stubs.append((name, T5_WIDTHS[t5_name]))
    return tuple(stubs)
