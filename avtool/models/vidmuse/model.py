"""The VidMuse model on transformers: MusicGen LM, video conditioner, T5 stub, EnCodec; checkpoint conversion.

`state_dict.bin` is audiocraft's export dict (`export.export_lm`): `best_state` (the LMModel state dict), `xp.cfg`
(YAML), `version`, `exported`. The LM keys are renamed onto `MusicgenForCausalLM` as transformers'
`convert_musicgen_transformers.py` does, but only under the LM prefixes (`emb.`, `transformer.`, `out_norm.`,
`linears.`) so the video modules' own `norm1`/`norm2`/`*_embedding` keep their names; packed `in_proj_weight`
rows [q | k | v] are split onto `q_proj/k_proj/v_proj`. Video and stub keys load verbatim. Every problem is
reported by the checkpoint's own (upstream) key names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from avtool.errors import WeightsError
from avtool.models.vidmuse.config import VidMuseConfig
from avtool.models.vidmuse.video import VideoConditioner
from avtool.weights.loading import shortlist

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, EncodecModel

CODEC_NAME = "facebook/encodec_32khz"  # what `compression_state_dict.bin` names ('pretrained')
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor defaults, used when the folder omits them
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Context of a chunked EnCodec decode (`VidMuse._decode_in_chunks`), in codec frames (50 per second). encodec_32khz's
# SEANet decoder is non-causal convolutions around one unidirectional LSTM at the frame rate.
# - Convolutions (kernels 7, 3, 1 around the upsampling ratios 8, 5, 4, 4; the tiny config has the same geometry):
#   a code moves the output at most 3.75 frames before it (measured by changing one code), so 8 future frames cover
#   them, and the reflect padding at a chunk's cut end stays inside the frames that are dropped.
# - The LSTM is the only non-local part: a frame's output depends on every earlier frame through the state, and a
#   chunk starts from a zero state. audiocraft's recipe for this codec trains on 1 s crops, each from a zero state
#   (`solver/compression/encodec_musicgen_32khz.yaml` keeps default.yaml's `dataset.segment_duration: 1`): nothing in
#   training rewarded memory beyond 50 frames, and a trained LSTM forgets its initial state geometrically (forget
#   gates < 1). 250 past frames (5 s) give every chunk five times the longest history the codec learnt from. In the
#   tiny codec a changed code moves the output by < 1e-6 after 15 frames and < 1e-7 after 21.
DECODE_PAST_FRAMES = 250
DECODE_FUTURE_FRAMES = 8

_LM_RENAMES = (  # transformers' rename_keys, in its order, applied to LM keys only
    ("cross_attention", "encoder_attn"),
    ("linear1", "fc1"),
    ("linear2", "fc2"),
    ("norm1", "self_attn_layer_norm"),
    ("norm_cross", "encoder_attn_layer_norm"),
    ("norm2", "final_layer_norm"),
)
_LM_PACKED = re.compile(r"lm\.model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv])_proj\.weight")
# A non-persistent buffer in transformers >= 4.31; a file written with an older transformers carries it.
_TOLERATED_EXTRA = frozenset({"visual_encoder_model.vision_model.embeddings.position_ids"})


class TextConditionerStub(nn.Module):
    """VidMuse's `T5Conditioner`: no T5, only `BaseConditioner.output_proj`. Unused at inference; kept so that
    `condition_provider.conditioners.<name>.output_proj.*` load strictly (an upstream quirk)."""

    def __init__(self, t5_width: int, dim: int) -> None:
        super().__init__()
        self.output_proj = nn.Linear(t5_width, dim)


class VidMuse(nn.Module):
    """What VidMuse runs: `lm` (MusicgenForCausalLM), `video` (VideoConditioner), `condition_provider` (stubs) and,
    once loaded, `codec` (transformers EncodecModel, kept out of the checkpoint conversion)."""

    def __init__(self, config: VidMuseConfig, clip_config: CLIPVisionConfig, image_mean: tuple[float, ...] = CLIP_MEAN,
                 image_std: tuple[float, ...] = CLIP_STD) -> None:
        from transformers import MusicgenForCausalLM

        super().__init__()
        self.config = config
        self.lm = MusicgenForCausalLM(config.decoder_config()).eval()
        self.video = VideoConditioner(clip_config, config.dim, config.num_heads, config.dim_head, config.temporal_depth,
                                      config.hidden_scale, config.fusion_heads, image_mean, image_std)
        self.condition_provider = nn.Module()
        self.condition_provider.conditioners = nn.ModuleDict(
            {name: TextConditionerStub(width, config.dim) for name, width in config.text_conditioners})
        self.codec = None

    @property
    def special_token(self) -> int:
        return self.config.card

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def frame_size(self) -> int:
        """Frames are squashed to this square size before CLIP (upstream `Resize((224, 224))`)."""
        return self.video.frame_size

    @property
    def tokens_per_frame(self) -> int:
        return self.video.tokens_per_frame

    @property
    def sample_rate(self) -> int:
        return self._codec().config.sampling_rate

    @property
    def frame_rate(self) -> int:
        """Codec frames (LM steps) per second: 50 for encodec_32khz (hop 640)."""
        return self._codec().config.frame_rate

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The parts whose weights come from `state_dict.bin`, by their prefix in our state dict."""
        return {"lm": self.lm, "video": self.video, "condition_provider": self.condition_provider}

    def encode_video(self, local_frames: torch.Tensor, global_frames: torch.Tensor) -> torch.Tensor:
        """`(B, T_l, 3, S, S)` local and `(B, T_g, 3, S, S)` global frames (0..255) → video_emb `(B, T_l * tokens, dim)`."""
        return self.video(local_frames, global_frames)

    def cfg_conditioning(self, local_frames: torch.Tensor, global_frames: torch.Tensor) -> torch.Tensor:
        """The CFG batch `[cond; uncond]` `(2B, T_l * tokens, dim)`: upstream's null condition is the all-black video
        of the same length (`ClassifierFreeGuidanceDropout(p=1)` zeroes the frames) through the same encoder, in one
        batch as `LMModel.generate` does; there is no learned null embedding."""
        return self.video(torch.cat([local_frames, torch.zeros_like(local_frames)]),
                          torch.cat([global_frames, torch.zeros_like(global_frames)]))

    def logits(self, sequence: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """Full (uncached) LM forward: delayed codes `(B, K, S)` and video_emb `(B, N, dim)` → `(B, K, S, card)`."""
        batch, codebooks, steps = sequence.shape
        out = self.lm(input_ids=sequence.reshape(batch * codebooks, steps), encoder_hidden_states=video_emb, use_cache=False)
        return out.logits.reshape(batch, codebooks, steps, -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """Codes `(B, K, T)` (no special tokens) → 32 kHz mono waveform `(B, 1, T * hop)` in fp32.

        Up to `chunk_frames` frames (any number when None) in one EnCodec call, as audiocraft's
        `HFEncodecCompressionModel.decode` (`model.decode(codes[None], [None])`): bit for bit upstream's audio.
        Longer pieces go through `_decode_in_chunks`, whose memory does not grow with T (one call on 10 minutes of
        codes holds ~3 GB of activations even in the tiny codec; a chunk of 30 s + context, ~0.2 GB).
        """
        codec = self._codec()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codec.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {codec.config.codebook_size}); undo the delay pattern first")
        codes = codes.to(next(codec.parameters()).device)
        with torch.autocast(codes.device.type, enabled=False):  # upstream decodes after leaving its fp16 autocast
            if chunk_frames is None or codes.shape[-1] <= chunk_frames:
                return self._decode_once(codes)
            return self._decode_in_chunks(codes, chunk_frames)

    def _decode_once(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(codes[None], [None], return_dict=False)[0].float()

    def _decode_in_chunks(self, codes: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """The one-call decode, `chunk_frames` frames at a time, each decoded with `DECODE_PAST_FRAMES` frames before
        it and `DECODE_FUTURE_FRAMES` after it that are decoded and dropped (see there for why they are enough).

        Measured on the tiny codec (`download-weights --tiny vidmuse`): 3000 random frames in chunks of 1500 differ
        from the one-call decode by at most 9e-8 (peak amplitude 0.17), float rounding; with 20 past frames instead
        of 250 by 2e-7, with 10 by 2e-5, with none by 3e-2 (the seams).
        """
        batch, _, frames = codes.shape
        hop = self.codec.config.hop_length
        audio = torch.empty(batch, 1, frames * hop, device=codes.device)
        for start in range(0, frames, chunk_frames):
            stop = min(start + chunk_frames, frames)
            first, last = max(start - DECODE_PAST_FRAMES, 0), min(stop + DECODE_FUTURE_FRAMES, frames)
            decoded = self._decode_once(codes[..., first:last])
            audio[..., start * hop:stop * hop] = decoded[..., (start - first) * hop:(stop - first) * hop]
        return audio

    def _codec(self):
        if self.codec is None:
            raise RuntimeError("no codec attached: load the model with load_vidmuse")
        return self.codec


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint conversion


@dataclass(frozen=True)
class Source:
    """Where one of our tensors comes from: an upstream key, and for packed q/k/v the row block (0, 1, 2) of 3."""

    key: str
    block: int | None = None


def upstream_source(key: str) -> Source:
    """The upstream key (and packed row block) that our state-dict key `key` is read from."""
    if key.startswith(("video.", "condition_provider.")):
        return Source(key.removeprefix("video."))
    if match := _LM_PACKED.fullmatch(key):
        layer, attention, which = match.groups()
        name = "self_attn" if attention == "self_attn" else "cross_attention"
        return Source(f"transformer.layers.{layer}.{name}.in_proj_weight", "qkv".index(which))
    if key.startswith("lm.model.decoder.embed_tokens."):
        return Source("emb." + key.removeprefix("lm.model.decoder.embed_tokens."))
    if key.startswith("lm.lm_heads."):
        return Source("linears." + key.removeprefix("lm.lm_heads."))
    if key.startswith("lm.model.decoder.layer_norm."):
        return Source("out_norm." + key.removeprefix("lm.model.decoder.layer_norm."))
    if key.startswith("lm.model.decoder.layers."):
        name = "transformer.layers." + key.removeprefix("lm.model.decoder.layers.")
        for upstream, ours in _LM_RENAMES:
            name = name.replace(f".{ours}.", f".{upstream}.")
        return Source(name)
    raise KeyError(f"no upstream source for {key}")


def upstream_layout(model: VidMuse) -> dict[str, tuple[int, ...]]:
    """Every upstream key the model needs, with its shape (packed q/k/v: 3× the rows of one projection)."""
    layout: dict[str, tuple[int, ...]] = {}
    for key, tensor in _checkpoint_state(model).items():
        source = upstream_source(key)
        shape = tuple(tensor.shape)
        layout[source.key] = (3 * shape[0], *shape[1:]) if source.block is not None else shape
    return layout


def convert_state_dict(best_state: Mapping[str, torch.Tensor], model: VidMuse, name: str = "state_dict.bin") -> dict[str, torch.Tensor]:
    """Upstream `best_state` → our state dict for `model` (tensors may be on the meta device; packed rows are views).

    Raises WeightsError naming the first unexpected, missing and wrong-shaped keys by their upstream names.
    """
    layout = upstream_layout(model)
    unexpected = sorted(set(best_state) - set(layout) - _TOLERATED_EXTRA)
    missing = sorted(set(layout) - set(best_state))
    wrong = [f"{key} {tuple(best_state[key].shape)} != {shape}" for key, shape in sorted(layout.items())
             if key in best_state and tuple(best_state[key].shape) != shape]
    problems = ", ".join(filter(None, (shortlist("unexpected keys", unexpected), shortlist("missing keys", missing),
                                       shortlist("wrong shapes", wrong))))
    if problems:
        raise WeightsError(f"{name}: checkpoint does not fit VidMuse ({model.config.num_layers} LM layers, "
                           f"dim {model.config.dim}): {problems}")
    state = {}
    for key in _checkpoint_state(model):
        source = upstream_source(key)
        tensor = best_state[source.key]
        state[key] = tensor if source.block is None else tensor.chunk(3, dim=0)[source.block]
    return state


def to_upstream_state_dict(model: VidMuse) -> dict[str, torch.Tensor]:
    """The inverse of `convert_state_dict`: our weights under upstream names, q/k/v packed (tiny checkpoints)."""
    blocks: dict[str, dict[int, torch.Tensor]] = {}
    state = {}
    for key, tensor in _checkpoint_state(model).items():
        source = upstream_source(key)
        if source.block is None:
            state[source.key] = tensor.detach().clone()
        else:
            blocks.setdefault(source.key, {})[source.block] = tensor.detach()
    state.update({key: torch.cat([parts[i] for i in range(3)]) for key, parts in blocks.items()})
    return dict(sorted(state.items()))


def _checkpoint_state(model: VidMuse) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": tensor for prefix, module in model.checkpoint_modules().items()
            for key, tensor in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def read_export(export: Mapping, name: str = "state_dict.bin") -> tuple[VidMuseConfig, Mapping[str, torch.Tensor]]:
    """The config and `best_state` of an audiocraft export dict (already loaded with `weights_only=True`)."""
    if not isinstance(export, Mapping) or "best_state" not in export or "xp.cfg" not in export:
        found = sorted(export)[:8] if isinstance(export, Mapping) else type(export).__name__
        raise WeightsError(f"{name}: not an audiocraft export (needs 'best_state' and 'xp.cfg', found {found})")
    best_state, text = export["best_state"], export["xp.cfg"]
    if not isinstance(text, str):
        raise WeightsError(f"{name}: 'xp.cfg' is a {type(text).__name__}, not the YAML text audiocraft exports")
    if not isinstance(best_state, Mapping) or not all(isinstance(v, torch.Tensor) for v in best_state.values()):
        raise WeightsError(f"{name}: 'best_state' is not a flat state dict of tensors")
    try:
        config = VidMuseConfig.from_xp_cfg(text)
    except WeightsError as error:
        raise WeightsError(f"{name}: {error.message}") from None
    return config, best_state


def read_clip_folder(clip_dir: Path) -> tuple[CLIPVisionConfig, tuple[float, ...], tuple[float, ...]]:
    """CLIP's vision config and the processor's mean/std from a `clip-vit-base-patch32` folder (weights unused:
    state_dict.bin carries the vision tower)."""
    from transformers import CLIPVisionConfig

    clip_dir = _folder(clip_dir)
    try:
        clip_config = CLIPVisionConfig.from_pretrained(clip_dir, local_files_only=True)
        processor_file = clip_dir / "preprocessor_config.json"
        processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
    except (OSError, ValueError) as error:
        raise WeightsError(f"{clip_dir}: unreadable CLIP config ({str(error).splitlines()[0]})") from None
    mean, std = tuple(processor.get("image_mean", CLIP_MEAN)), tuple(processor.get("image_std", CLIP_STD))
    if processor.get("rescale_factor", 1 / 255) != 1 / 255 or len(mean) != 3 or len(std) != 3:
        raise WeightsError(f"{clip_dir}/preprocessor_config.json: unsupported rescale_factor/image_mean/image_std")
    return clip_config, mean, std


def load_codec(codec_dir: Path, compression: Mapping | None, config: VidMuseConfig) -> EncodecModel:
    """transformers' EncodecModel from `codec_dir` (never the hub), checked against what `compression_state_dict.bin`
    names and against the LM's codebooks. fp32: upstream decodes outside the fp16 autocast."""
    from safetensors import SafetensorError
    from transformers import EncodecModel

    if compression is not None:
        named = compression.get("pretrained") if isinstance(compression, Mapping) else None
        if named != CODEC_NAME:
            raise WeightsError(f"compression_state_dict.bin names codec {named!r}; avtool runs only {CODEC_NAME!r}")
    try:
        codec = EncodecModel.from_pretrained(_folder(codec_dir), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise WeightsError(f"{codec_dir}: cannot load EnCodec ({str(error).splitlines()[0]})") from None
    c = codec.config
    if c.codebook_size != config.card or c.num_quantizers < config.num_codebooks or c.audio_channels != 1:
        raise WeightsError(f"{codec_dir}: EnCodec with {c.num_quantizers} x {c.codebook_size} codes, {c.audio_channels} "
                           f"channel(s) cannot decode the LM's {config.num_codebooks} x {config.card} mono codes")
    return codec.eval().requires_grad_(False)


def build_vidmuse(config: VidMuseConfig, clip_config: CLIPVisionConfig, image_mean: tuple[float, ...] = CLIP_MEAN,
                  image_std: tuple[float, ...] = CLIP_STD, device: str | torch.device = "meta") -> VidMuse:
    """The modules for `config`, by default on the meta device (no memory, no init cost) for `load_state_dict(assign=True)`."""
    with torch.device(device):
        return VidMuse(config, clip_config, image_mean, image_std)


def load_vidmuse(export: Mapping, compression: Mapping | None, codec_dir: Path, clip_dir: Path,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 name: str = "state_dict.bin") -> VidMuse:
    """VidMuse from its export dict (`load_checkpoint(state_dict.bin)`), the compression dict, and the EnCodec and
    CLIP folders. LM and video weights are cast to `dtype` (upstream: fp32 weights under fp16 autocast on CUDA,
    fp32 on CPU); the codec stays fp32. Every key must fit: WeightsError (exit 3) names the first that do not."""
    config, best_state = read_export(export, name)
    clip_config, mean, std = read_clip_folder(clip_dir)
    codec = load_codec(codec_dir, compression, config)
    model = build_vidmuse(config, clip_config, mean, std)
    state = convert_state_dict(best_state, model, name)
    for prefix, module in model.checkpoint_modules().items():
        part = {key.removeprefix(prefix + "."): tensor.to(dtype) for key, tensor in state.items() if key.startswith(prefix + ".")}
        module.load_state_dict(part, strict=True, assign=True)
    materialize_buffers(model)
    model.codec = codec
    return model.to(device).eval().requires_grad_(False)


def materialize_buffers(model: VidMuse) -> None:
    """Recreate the non-persistent buffers that stayed on the meta device (they are not in any checkpoint)."""
    decoder = model.lm.model.decoder
    positions = decoder.embed_positions
    if positions.weights.is_meta:
        positions.weights = positions.get_embedding(positions.num_positions, positions.embedding_dim)
    embeddings = model.video.visual_encoder_model.vision_model.embeddings
    if embeddings.position_ids.is_meta:
        embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
    dtype = decoder.layer_norm.weight.dtype
    positions.weights = positions.weights.to(dtype)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:3]}")


def _folder(path: Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path}: missing folder or its config.json")
    return path


def upstream_autocast(device: str | torch.device):
    """The precision upstream generates in: fp16 autocast on CUDA, nothing (fp32) elsewhere."""
    import contextlib

    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
