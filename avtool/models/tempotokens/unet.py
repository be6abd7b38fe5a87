"""Per-frame conditions for diffusers' stock `UNet3DConditionModel`.

TempoTokens conditions every video frame on its own text context, (B*F, L, D). Upstream comments out the line of
`UNet3DConditionModel.forward` that `repeat_interleave`s `encoder_hidden_states` over frames. Here the model, its
config and its state-dict keys stay stock (zeroscope's `unet/` folder loads with `UNet3DConditionModel`), and:

- `frame_conditions` packs the F contexts of each clip side by side along the feature axis, (B, L, F*D), which is
  what the caller passes as `encoder_hidden_states`;
- diffusers' own repeat then gives every (clip, frame) row all F contexts of its clip;
- `use_frame_conditions` wraps the processor of each spatial cross-attention (`attn2` of the `Transformer2DModel`
  blocks, the only layers that read `encoder_hidden_states`: `transformer_in` and the temporal attentions get none)
  so that row r keeps only frame r % F's slice, then runs the processor it replaced.

The processor reads F from the context's width (F*D over the layer's `cross_attention_dim` D), so it carries no
state and an ordinary (B, L, D) condition still works (F = 1: the same context for every frame).

Why not the alternatives: skipping the repeat means overriding `forward`, i.e. copying diffusers' whole UNet3D
forward; a subclass also changes the class name written to `config.json`. The cost of this route is memory: the
repeated context is F times the per-frame one, e.g. 2 (CFG) x 24 frames x 77 x 24 x 1024 in fp16 = 182 MB, once
per UNet call, small beside the UNet's activations; attention itself sees only L keys per row, as upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet3DConditionModel
    from diffusers.models.attention_processor import Attention


class FrameConditionProcessor:
    """Wraps a cross-attention processor: each row of the (B*F)-row batch attends to its own frame's context."""

    def __init__(self, inner: Callable[..., torch.Tensor]) -> None:
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            encoder_hidden_states = _frame_context(encoder_hidden_states, attn.cross_attention_dim)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def use_frame_conditions(unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """Let `unet` take `frame_conditions(...)` as `encoder_hidden_states` (in place; returns `unet`). Parameters and
    keys are unchanged. Call it after any `set_attn_processor` / xformers switch: those replace the wrappers."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    for module in unet.modules():
        if isinstance(module, Transformer2DModel):
            for block in module.transformer_blocks:
                if not isinstance(block.attn2.processor, FrameConditionProcessor):
                    block.attn2.set_processor(FrameConditionProcessor(block.attn2.processor))
    return unet


def frame_conditions(per_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame contexts (B*F, L, D), row b * F + f → `encoder_hidden_states` (B, L, F*D) for a unet prepared by
    `use_frame_conditions`."""
    rows, length, width = per_frame.shape
    if rows % num_frames:
        raise ValueError(f"{rows} context rows are not a whole number of clips of {num_frames} frames")
    clips = rows // num_frames
    by_frame = per_frame.reshape(clips, num_frames, length, width)
    return by_frame.transpose(1, 2).reshape(clips, length, num_frames * width)


class FrameConditionedUNet(nn.Module):
    """The model adapter samplers call: `(x (B, C, F, H, W), t, context (B, F, L, D)) -> ε`, one context per frame
    (`CFGDenoiser` stacks [uncond; cond] rows); a context (B, 1, L, D) is shared by all frames (the stock path)."""

    def __init__(self, unet: UNet3DConditionModel) -> None:
        super().__init__()
        self.unet = use_frame_conditions(unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # the sampler carries fp32 latents (guidance and scheduler steps run in fp32); the UNet takes its own dtype
        x = x.to(self.unet.dtype)
        clips, frames = context.shape[:2]
        if frames == 1:
            return self.unet(x, t, encoder_hidden_states=context[:, 0], return_dict=False)[0]
        packed = frame_conditions(context.reshape(clips * frames, *context.shape[2:]), frames)
        return self.unet(x, t, encoder_hidden_states=packed, return_dict=False)[0]


def _frame_context(packed: torch.Tensor, width: int) -> torch.Tensor:
    """(B*F, L, F*width) as repeated by diffusers → (B*F, L, width): row r keeps frame r % F's context."""
    rows, length, packed_width = packed.shape
    frames, rest = divmod(packed_width, width)
    if rest or rows % frames:
        raise ValueError(f"context of width {packed_width} for {rows} rows does not hold one {width}-wide context "
                         "per frame: pass frame_conditions(...)")
    # row b * F + f keeps the f-th of its F contexts: the diagonal of the (frame, context) axes
    by_frame = packed.reshape(rows // frames, frames, length, frames, width)
    return torch.diagonal(by_frame, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(rows, length, width)
