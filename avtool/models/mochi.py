"""Mochi's own conventions on top of diffusers' `MochiTransformer3DModel`: how a sampler calls it, which
parameters stay in fp32, and a static-shape joint attention for compiled and CUDA-graph steps.

diffusers' `MochiAttnProcessor2_0` loops over the batch and gathers each sample's valid text tokens
with `torch.nonzero`: shapes depend on data, which forces a host sync (no CUDA-graph capture) and
graph breaks under torch.compile. Masking the padded text keys in one batched SDPA call gives the
same visual output: padded text tokens are never attended to, only their own (unused) outputs differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on interleaved (even, odd) channel pairs, computed in fp32."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


class MaskedMochiAttnProcessor:
    """Drop-in processor for diffusers' `MochiAttention`: one SDPA over [visual, text] with a key mask."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(2, (attn.heads, -1))

        query = attn.norm_q(heads(attn.to_q(hidden_states)))
        key = attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)

        visual_length = query.shape[1]
        keep = F.pad(attention_mask.bool(), (visual_length, 0), value=True)[:, None, None, :]
        joint = [torch.cat(pair, dim=1).transpose(1, 2) for pair in ((query, text_query), (key, text_key), (value, text_value))]
        out = F.scaled_dot_product_attention(*joint, attn_mask=keep).transpose(1, 2).flatten(2, 3)

        hidden_states, encoder_hidden_states = out.split_with_sizes((visual_length, out.shape[1] - visual_length), dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def use_masked_attention(module: nn.Module) -> int:
    """Give every Mochi joint attention inside `module` the static-shape processor; return how many."""
    from diffusers.models.attention_processor import MochiAttention

    layers = [m for m in module.modules() if isinstance(m, MochiAttention)]
    for layer in layers:
        layer.processor = MaskedMochiAttnProcessor()
    return len(layers)


class MochiFlowModel(nn.Module):
    """Mochi's call convention for a sampler: `(x, sigma, text, text_mask, **extra) -> velocity (x0 - eps)`, fp32.

    The transformer is conditioned on the timestep `1000 * (1 - sigma)`, passed in fp32 as genmo and diffusers'
    `MochiPipeline` do (its sinusoidal embedding is computed before the cast to the model's dtype; a bf16 timestep
    would round e.g. 998.4375 to 998.0). The latents go in the model's dtype; the prediction comes back in fp32.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                **extra: torch.Tensor | None) -> torch.Tensor:
        timestep = (1000 * (1 - sigma.float())).expand(x.shape[0])
        prediction = self.transformer(hidden_states=x.to(text.dtype), encoder_hidden_states=text, timestep=timestep,
                                      encoder_attention_mask=text_mask, return_dict=False, **extra)
        return (prediction[0] if isinstance(prediction, tuple) else prediction).float()


def fp32_parameter_names(model: nn.Module) -> set[str]:
    """Parameters genmo keeps in fp32 under bf16 autocast: the learned RoPE `pos_frequencies` and the RMSNorm scales.

    Everything else (every Linear, i.e. every matmul) may be stored in the run dtype. diffusers' RMSNorm computes
    in fp32 and casts back to its input's dtype when its weight is fp32, as genmo's does.
    """
    from diffusers.models.normalization import MochiRMSNorm

    names = {name for name, _ in model.named_parameters() if name.endswith("pos_frequencies")}
    for prefix, module in model.named_modules():
        if isinstance(module, MochiRMSNorm) and module.weight is not None:
            names.add(f"{prefix}.weight")
    return names
