"""MusicGen's codebook delay pattern and the cached LM step that `avtool.sampling.tokens.sample_tokens` drives.

Delay pattern (audiocraft `DelayedPatternProvider(delays=[0..K-1])`): T frames become K + T sequence steps; step 0
is all special tokens, and at step s >= 1 codebook q holds frame s - 1 - q (special where that frame does not
exist). `LMModel.generate` fills a `(B, K, T)` grid with the prompt and -1 ("unknown"), lays it out in that
pattern, feeds steps 0..P at once (P = prompt frames), samples steps P+1 .. T+K-1 one at a time, forces the special
token where the pattern has no frame and keeps prompt cells as they are; `delay_constraint` is that rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

UNKNOWN = -1  # audiocraft's `unknown_token`: a cell the loop samples


def delay_pattern(codes: torch.Tensor, special: int) -> torch.Tensor:
    """Codes `(B, K, T)` → delayed sequence `(B, K, T + K)` with `special` where no frame falls."""
    batch, codebooks, frames = codes.shape
    sequence = codes.new_full((batch, codebooks, frames + codebooks), special)
    for q in range(codebooks):
        sequence[:, q, 1 + q:1 + q + frames] = codes[:, q]
    return sequence


def undo_delay_pattern(sequence: torch.Tensor) -> torch.Tensor:
    """Delayed sequence `(B, K, T + K)` → codes `(B, K, T)` (audiocraft `revert_pattern_sequence`)."""
    codebooks = sequence.shape[1]
    frames = sequence.shape[-1] - codebooks
    if frames < 0:
        raise ValueError(f"a delayed sequence of {codebooks} codebooks has at least {codebooks} steps, got {sequence.shape[-1]}")
    return torch.stack([sequence[:, q, 1 + q:1 + q + frames] for q in range(codebooks)], dim=1)


def generation_steps(num_frames: int, prompt_frames: int, num_codebooks: int) -> int:
    """How many tokens the loop samples for a window of `num_frames` frames whose first `prompt_frames` are given."""
    if not 0 <= prompt_frames < num_frames:
        raise ValueError(f"need 0 <= prompt frames < frames, got {prompt_frames} and {num_frames}")
    return num_frames + num_codebooks - 1 - prompt_frames


def first_input(prompt: torch.Tensor, num_frames: int, special: int) -> torch.Tensor:
    """The loop's `first_input`: steps 0..P of the window's delayed grid, `(B, K, P + 1)` (prompt `(B, K, P)`, P may be 0)."""
    return delay_template(prompt, num_frames, special)[..., :prompt.shape[-1] + 1]


def delay_template(prompt: torch.Tensor, num_frames: int, special: int) -> torch.Tensor:
    """The window's delayed grid `(B, K, num_frames + K)`: prompt frames and special tokens fixed, `UNKNOWN` elsewhere."""
    batch, codebooks, given = prompt.shape
    grid = prompt.new_full((batch, codebooks, num_frames), UNKNOWN)
    grid[..., :given] = prompt
    return delay_pattern(grid, special)


def delay_constraint(prompt: torch.Tensor, num_frames: int, special: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """`constrain(tokens (B, K), position)` for `sample_tokens`: at sequence step `position`, keep the sampled token
    only where the grid is unknown; elsewhere put the prompt's code or the special token."""
    template = delay_template(prompt, num_frames, special)

    def constrain(tokens: torch.Tensor, position: int) -> torch.Tensor:
        fixed = template[..., position].to(tokens.device)
        return torch.where(fixed == UNKNOWN, tokens, fixed)

    return constrain


class _StaticPositions(nn.Module):
    """MusicGen's sinusoidal positions without the table-growing branch on the cache length, which reads a device
    tensor on the host (not allowed while a CUDA graph is captured). Same table, sized for the whole window."""

    def __init__(self, original: nn.Module, length: int) -> None:
        super().__init__()
        length = max(length, original.weights.shape[0])
        table = original.get_embedding(length, original.embedding_dim)
        self.weights = nn.Buffer(table.to(original.weights.device, original.weights.dtype), persistent=False)
        self.num_positions, self.embedding_dim, self.get_embedding = length, original.embedding_dim, original.get_embedding

    def forward(self, input_ids: torch.Tensor, cache_length: torch.Tensor | int = 0) -> torch.Tensor:
        steps = input_ids.shape[-1]
        if isinstance(cache_length, int) and steps + cache_length > self.weights.shape[0]:  # uncached calls only
            self.weights = self.get_embedding(steps + cache_length, self.embedding_dim).to(self.weights)
        return self.weights.index_select(0, torch.arange(steps, device=input_ids.device) + cache_length)


class VidMuseStep(nn.Module):
    """The LM step for the token loop: `step(tokens (rows, K, L), position) -> logits (rows, K, card)`.

    Self-attention keys/values live in a transformers StaticCache of `max_steps` slots, written at `position` (so a
    repeated call, as in CUDA-graph capture, rewrites the same slots, and a new window starts again at 0). The
    cross-attention keys/values of every layer are computed once per window by `set_conditioning(video_emb)` into
    fixed buffers of `max_video_tokens` slots; a shorter window's tail is masked out, so one adapter (and one captured
    graph per input shape) serves every window of a job, as upstream reuses its precomputed `video_emb` per chunk.
    `rows` is the LM batch: 2B with CFG (`[cond; uncond]`, see `VidMuse.cfg_conditioning`). `max_steps` must hold
    the longest window's written slots, `num_frames + num_codebooks - 1` (1503 for 30 s at 50 Hz); `max_video_tokens`
    its video tokens, `local frames * tokens_per_frame` (3000 for 60 frames of 50 tokens).
    """

    def __init__(self, lm: nn.Module, rows: int, max_steps: int, max_video_tokens: int) -> None:
        from transformers.cache_utils import EncoderDecoderCache, StaticCache

        super().__init__()
        if lm.config._attn_implementation != "sdpa":
            raise ValueError(f"VidMuseStep needs the LM's SDPA attention (boolean masks), got {lm.config._attn_implementation!r}")
        self.lm, self.rows, self.max_steps, self.max_video_tokens = lm, rows, max_steps, max_video_tokens
        decoder = lm.model.decoder
        if not isinstance(decoder.embed_positions, _StaticPositions) or decoder.embed_positions.weights.shape[0] < max_steps:
            decoder.embed_positions = _StaticPositions(decoder.embed_positions, max_steps)
        self.cache = EncoderDecoderCache(StaticCache(config=lm.config, max_cache_len=max_steps),
                                         StaticCache(config=lm.config, max_cache_len=max_video_tokens))
        device = lm.lm_heads[0].weight.device
        self.register_buffer("cross_mask", torch.zeros(rows, 1, 1, max_video_tokens, dtype=torch.bool, device=device),
                             persistent=False)
        self.register_buffer("cross_source", torch.zeros(rows, 0, lm.config.hidden_size, device=device), persistent=False)
        self.video_tokens = 0

    @torch.no_grad()
    def set_conditioning(self, video_emb: torch.Tensor) -> None:
        """Project `video_emb (rows, N, dim)` (N <= max_video_tokens) to every layer's cross-attention keys/values,
        in place (the buffers keep their addresses). Call under the same autocast as the steps."""
        rows, tokens, _ = video_emb.shape
        if rows != self.rows or not 0 < tokens <= self.max_video_tokens:
            raise ValueError(f"video_emb must be ({self.rows}, 1..{self.max_video_tokens}, dim), got {tuple(video_emb.shape)}")
        for index, layer in enumerate(self.lm.model.decoder.layers):
            attention = layer.encoder_attn
            keys, values = (projection(video_emb).unflatten(-1, (-1, attention.head_dim)).transpose(1, 2)
                            for projection in (attention.k_proj, attention.v_proj))
            cached = self.cache.cross_attention_cache.layers[index]
            if not cached.is_initialized:
                cached.lazy_initialization(keys, values)
            cached.keys[:, :, :tokens].copy_(keys)
            cached.keys[:, :, tokens:].zero_()
            cached.values[:, :, :tokens].copy_(values)
            cached.values[:, :, tokens:].zero_()
            self.cache.is_updated[index] = True
        self.cross_mask[..., :tokens] = True
        self.cross_mask[..., tokens:] = False
        self.video_tokens = tokens

    def forward(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        if not self.video_tokens:
            raise RuntimeError("VidMuseStep.set_conditioning must run before the first step of a window")
        for layer in self.cache.self_attention_cache.layers:
            layer.cumulative_length.copy_(position)
        rows, codebooks, length = tokens.shape
        # our own causal mask over the cache slots: transformers' would read `position` on the host for a prefill
        slots = torch.arange(self.max_steps, device=tokens.device)
        causal = slots <= (torch.arange(length, device=tokens.device) + position)[:, None]
        hidden = self.lm.model(
            input_ids=tokens.reshape(rows * codebooks, length),
            attention_mask=causal[None, None],
            encoder_hidden_states=self.cross_source,  # read for its presence only: the keys/values are cached
            encoder_attention_mask=self.cross_mask,
            cache=self.cache,
            use_cache=True,
        ).last_hidden_state[:, -1]
        return torch.stack([head(hidden) for head in self.lm.lm_heads], dim=1)
