"""VidMuse's video front-end: CLIP per frame, the long/short-term (LSTV) modules, the projection into the LM.

Mirrors `LMModel.compute_video_emb` (audiocraft/models/lm.py in ZeyueT/VidMuse): every frame goes through CLIP's
vision tower and its `last_hidden_state` (CLS + patch tokens, before `post_layernorm`) is kept; a learned
per-token position embedding is added (spatial only, there is no temporal one); a small pre-LN transformer runs
over the tokens of each frame on its own; the local (2 fps) tokens then attend to the global (whole video) tokens
and `visual_feature_proj` maps the result to the LM width: `(B, T_local * tokens, D)`. Module and parameter names
are upstream's, so the checkpoint's video keys load verbatim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreNorm(nn.Module):
    """LayerNorm, then `fn` (upstream `transformer_module.PreNorm`)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FrameAttention(nn.Module):
    """Multi-head self-attention with a packed bias-free `to_qkv` (rows q | k | v), upstream `Attention`."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        # upstream drops the output projection when it would be the identity's shape
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0)) if project_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Linear → GELU → Linear (keys `net.0`, `net.3`; the dropouts at 1, 2, 4 are off), upstream `FeedForward`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FrameTransformer(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm over the tokens of one frame (upstream `lm.Transformer`,
    named "temporal" there although it never mixes frames)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, FrameAttention(dim, heads, dim_head)), PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


class LocalGlobalFusion(nn.Module):
    """Local tokens attend to global tokens (upstream `MultiHeadCrossAttention`, 3 heads):
    `norm1(attention + local)`, then `norm2(final_linear(x) + x)`; no projection after the attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.final_linear = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.query(local)), heads(self.key(global_)), heads(self.value(global_)))
        x = self.norm1(attended.transpose(1, 2).flatten(2) + local)
        return self.norm2(self.final_linear(x) + x)


class VideoConditioner(nn.Module):
    """Frames → the LM's cross-attention source. `clip_config` is a transformers `CLIPVisionConfig`; the per-frame
    width is CLIP's hidden size (768 for ViT-B/32, which upstream hard-codes as `temporal_dim`)."""

    def __init__(self, clip_config, lm_dim: int, heads: int, dim_head: int, depth: int, hidden_scale: float,
                 fusion_heads: int, image_mean: tuple[float, ...], image_std: tuple[float, ...],
                 rescale_factor: float = 1 / 255) -> None:
        from transformers import CLIPVisionModelWithProjection

        super().__init__()
        width = clip_config.hidden_size
        self.frame_size = clip_config.image_size
        self.tokens_per_frame = (clip_config.image_size // clip_config.patch_size) ** 2 + 1
        self.image_mean, self.image_std, self.rescale_factor = tuple(image_mean), tuple(image_std), rescale_factor
        # frozen upstream, but a registered submodule: its weights are in state_dict.bin
        self.visual_encoder_model = CLIPVisionModelWithProjection(clip_config)
        self.local_pos_embedding = nn.Parameter(torch.randn(1, self.tokens_per_frame, width))
        self.local_temporal_transformer = FrameTransformer(width, depth, heads, dim_head, int(width * hidden_scale))
        self.global_pos_embedding = nn.Parameter(torch.randn(1, self.tokens_per_frame, width))
        self.global_temporal_transformer = FrameTransformer(width, depth, heads, dim_head, int(width * hidden_scale))
        self.multi_head_cross_attention = LocalGlobalFusion(width, fusion_heads)
        self.visual_feature_proj = nn.Linear(width, lm_dim)

    def forward(self, local_frames: torch.Tensor, global_frames: torch.Tensor) -> torch.Tensor:
        """local `(B, T_l, 3, S, S)`, global `(B, T_g, 3, S, S)`, RGB in 0..255 (uint8 or float), S = `frame_size`
        → `(B, T_l * tokens_per_frame, lm_dim)`, frame-major."""
        local = self._frame_tokens(local_frames, self.local_pos_embedding, self.local_temporal_transformer)
        global_ = self._frame_tokens(global_frames, self.global_pos_embedding, self.global_temporal_transformer)
        return self.visual_feature_proj(self.multi_head_cross_attention(local, global_))

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP's processor on frames already at `frame_size`: rescale by 1/255, normalise by the CLIP mean/std
        (its resize and centre crop change nothing at that size), in fp32."""
        if frames.ndim != 4 or frames.shape[1] != 3 or tuple(frames.shape[-2:]) != (self.frame_size, self.frame_size):
            raise ValueError(f"frames must be (N, 3, {self.frame_size}, {self.frame_size}), got {tuple(frames.shape)}")
        mean = torch.tensor(self.image_mean, dtype=torch.float32, device=frames.device)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32, device=frames.device)[:, None, None]
        return (frames.float() * self.rescale_factor - mean) / std

    def _frame_tokens(self, frames: torch.Tensor, position: torch.Tensor, transformer: FrameTransformer) -> torch.Tensor:
        batch, num_frames = frames.shape[:2]
        pixels = self.pixel_values(frames.flatten(0, 1)).to(position.dtype)
        with torch.no_grad():
            hidden = self.visual_encoder_model.vision_model(pixel_values=pixels).last_hidden_state
        hidden = transformer(hidden + position)
        return hidden.unflatten(0, (batch, num_frames)).flatten(1, 2)
