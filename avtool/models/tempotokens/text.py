"""The per-frame text condition: the prompt encoded once per video frame, with the placeholder tokens' embeddings
replaced by that frame's mapper tokens.

Upstream patches `CLIPTextEmbeddings.forward` (`modules/text_encoder/modeling_clip_tempotokens.py`) to overwrite
the token embeddings at the placeholder ids before the position embeddings are added. transformers' `CLIPTextModel`
takes no `inputs_embeds` (5.x: `forward(input_ids, attention_mask, position_ids)`), so the same replacement is done
by a forward hook on the token embedding (`get_input_embeddings()`), registered for one call only. Only
`last_hidden_state` is used, as upstream.

Rows are batch-major, row b * F + f for clip b and frame f: the order in which diffusers' UNet3D lays out frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from avtool.models.tempotokens.mapper import MapperTokens

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

PLACEHOLDERS = ("<temp>", "<local1>", "<local2>", "<local3>", "<local4>", "<class>")
DEFAULT_PROMPT = " ".join(PLACEHOLDERS)  # upstream inference's `--prompt` default and the configs' `fallback_prompt`


def prompt_with_tokens(text: str | None) -> str:
    """The prompt around the audio tokens: the tokens alone for no text (upstream's default); text that places none
    of the placeholders itself gets them all appended ("a drummer on stage <temp> ... <class>")."""
    if text is None or not text.strip():
        return DEFAULT_PROMPT
    return text if any(token in text for token in PLACEHOLDERS) else f"{text} {DEFAULT_PROMPT}"


def add_placeholder_tokens(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> tuple[int, ...]:
    """Add `PLACEHOLDERS` to the tokenizer in order (ids 49408..49413 on zeroscope's) unless already there, grow the
    text encoder's token embedding to hold them, and return their ids. Their embedding rows are zeroed: encode_frames
    never reads them, and zeros keep any other use of them deterministic."""
    tokenizer.add_tokens(list(PLACEHOLDERS))
    ids = tuple(tokenizer.convert_tokens_to_ids(list(PLACEHOLDERS)))
    if max(ids) >= text_encoder.get_input_embeddings().num_embeddings:
        text_encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[list(ids)] = 0
    return ids


def encode_frames(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str, tokens: MapperTokens,
                  placeholder_ids: tuple[int, ...]) -> torch.Tensor:
    """`prompt` encoded for every frame of B clips → (B*F, L, D), L the tokenizer's max length. In frame f's row
    `<temp>` becomes `tokens.temporal[:, f]`, `<localk>` `tokens.local[k-1][:, f]` and `<class>`
    `tokens.class_token`. A prompt without placeholders gives the plain text encoding, repeated."""
    batch, frames = tokens.temporal.shape[:2]
    rows = (*(t.flatten(0, 1) for t in (tokens.temporal, *tokens.local)), tokens.class_token.repeat_interleave(frames, dim=0))
    token_ids = _token_ids(tokenizer, prompt).repeat(batch * frames, 1)
    return _encode(text_encoder, token_ids, dict(zip(placeholder_ids, rows, strict=True)))


def encode_text(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str, num_frames: int) -> torch.Tensor:
    """`prompt` as plain text (the unconditional or negative prompt), encoded once and repeated → (F, L, D)."""
    return _encode(text_encoder, _token_ids(tokenizer, prompt), {}).repeat(num_frames, 1, 1)


def _token_ids(tokenizer: CLIPTokenizer, prompt: str) -> torch.Tensor:
    """(1, L): padded and truncated to the tokenizer's max length (77 for CLIP), as diffusers' pipelines do."""
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _encode(text_encoder: CLIPTextModel, token_ids: torch.Tensor, replacements: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """last_hidden_state (N, L, D) of `token_ids` (N, L), where every position holding a key of `replacements` takes
    that row's vector from its (N, D) value instead of the learned embedding."""
    embedding = text_encoder.get_input_embeddings()
    token_ids = token_ids.to(embedding.weight.device)

    def replace(module: torch.nn.Module, args: tuple, embeds: torch.Tensor) -> torch.Tensor:
        for token_id, values in replacements.items():
            at_token = (token_ids == token_id).unsqueeze(-1)
            embeds = torch.where(at_token, values.to(embeds).unsqueeze(1), embeds)
        return embeds

    with embedding.register_forward_hook(replace):
        return text_encoder(input_ids=token_ids).last_hidden_state
