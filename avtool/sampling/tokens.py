"""The autoregressive token loop for audio language models: temperature, top-k / top-p, CFG on logits.

Sampling follows audiocraft's `LMModel._sample_next_token` (MusicGen, VidMuse): guided logits
`uncond + (cond - uncond) * scale` from one batch `[cond; uncond]`, then `softmax(logits / temperature)`,
then top-p if `top_p > 0`, else top-k if `top_k > 0`, then one draw; greedy (argmax) at temperature 0.

The draw takes its randomness from a CPU generator: `torch.multinomial` for one sample is the exponential
race `argmax(probs / q)` with `q ~ Exp(1)`, so `q` is drawn on the CPU and the argmax runs on the logits'
device. The tokens equal `torch.multinomial(probs.cpu(), 1, generator=generator)` exactly, a seed fixes
them on any device, and no token goes back to the host between steps.

Model specifics (MusicGen's codebook delay pattern, its KV cache) stay with the model adapter: the loop
calls `step(tokens, position, **extra_args)` and lets `constrain` fix the sampled tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TokenStep = Callable[..., torch.Tensor]
TokenCallback = Callable[[dict[str, Any]], None]


def guided_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the logits of a batch `[cond; uncond]` (2B rows, the order of audiocraft's
    `_sample_next_token` and transformers' `ClassifierFreeGuidanceLogitsProcessor`): B rows of
    `uncond + (cond - uncond) * scale`, in fp32."""
    cond, uncond = logits.float().chunk(2)
    return uncond + (cond - uncond) * scale


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0) -> torch.Tensor:
    """The distribution one token is drawn from, over the last axis, in fp32 (audiocraft's `sample_top_k` /
    `sample_top_p`): `softmax(logits / temperature)`, then top-p if `top_p > 0` (keep the most likely tokens
    while the probability mass before each is at most `top_p`), else top-k if `top_k > 0` (keep the tokens at
    least as likely as the k-th, ties included), renormalised. `top_k=0` and `top_p=0` switch them off.
    """
    if temperature <= 0:
        raise ValueError(f"sampling needs a positive temperature, got {temperature} (temperature 0 means greedy)")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p > 0.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        dropped = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(dropped, 0.0))
    elif top_k > 0:
        kth = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1).values[..., -1:]
        probs = probs * (probs >= kth)
    return probs / probs.sum(dim=-1, keepdim=True)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (last axis), equal to `torch.multinomial` on the CPU with `generator`.

    The exponential noise comes from the CPU `generator` (the default CPU generator when None) and moves to
    `probs`' device, so the same seed gives the same tokens on any device.
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"token sampling needs a CPU generator so that a seed fixes the tokens on any device, "
                         f"got {generator.device}")
    race = torch.empty(probs.shape, dtype=torch.float32).exponential_(1, generator=generator)
    race = race.clamp_min_(torch.finfo(torch.float32).tiny)  # a 0 would make 0/0 = NaN win the argmax
    if probs.device.type == "cuda":  # pinned and asynchronous: the host does not wait for the GPU each token
        race = race.pin_memory().to(probs.device, non_blocking=True)
    return torch.argmax(probs.float() / race.to(probs.device), dim=-1)


def sample_logits(
    logits: torch.Tensor,
    generator: torch.Generator | None = None,
    top_k: int = 250,
    top_p: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Next tokens (int64, the logits' shape without the vocabulary axis): greedy at `temperature` 0, else
    one draw from `sampling_probs(logits, temperature, top_k, top_p)`. MusicGen's defaults: top-k 250, T 1."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    return draw(sampling_probs(logits, temperature, top_k, top_p), generator)


@torch.no_grad()
def sample_tokens(
    step: TokenStep,
    first_input: torch.Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int = 250,
    top_p: float = 0.0,
    cfg_scale: float | None = None,
    extra_args: dict[str, Any] | None = None,
    constrain: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    callback: TokenCallback | None = None,
) -> torch.Tensor:
    """Generate `num_steps` tokens after `first_input` (`(..., P)`, e.g. MusicGen's `(B, codebooks, P)`).

    Step i calls `step(tokens, position, **extra_args) -> logits (..., vocab)` for the token after `tokens`,
    where `tokens` is `first_input` at step 0 and the previous step's tokens `(..., 1)` afterwards, and
    `position` (a 0-d int64 tensor on `first_input`'s device) is how many tokens came before `tokens`: the
    adapter keeps its KV cache and writes the new entries at `position`, so every step after the first has the
    same shapes and `StepRunner` can replay one CUDA graph for all of them.

    With `cfg_scale`, `tokens` reach `step` doubled as `[tokens; tokens]`, `extra_args` carry the conditioning
    as `[cond; uncond]`, and the logits are guided with `guided_logits`. `constrain(tokens, position)` may
    replace sampled tokens before they are kept and fed back (MusicGen's delay pattern forces its special token
    there). `callback({"i", "tokens", "position"})` runs after each token. Returns the new tokens `(..., num_steps)`.
    """
    if num_steps < 1:
        raise ValueError(f"sample_tokens needs at least one step, got {num_steps}")
    extra_args = extra_args or {}
    prompt = first_input.shape[-1]
    positions = torch.tensor([0, *range(prompt, prompt + num_steps - 1)], dtype=torch.int64, device=first_input.device)
    tokens, generated = first_input, []
    for i in range(num_steps):
        batch = torch.cat([tokens, tokens]) if cfg_scale is not None else tokens
        logits = step(batch, positions[i], **extra_args)
        if cfg_scale is not None:
            logits = guided_logits(logits, cfg_scale)
        next_tokens = sample_logits(logits, generator, top_k=top_k, top_p=top_p, temperature=temperature)
        if constrain is not None:
            next_tokens = constrain(next_tokens, prompt + i)
        generated.append(next_tokens)
        if callback is not None:
            callback({"i": i, "tokens": next_tokens, "position": prompt + i})
        tokens = next_tokens[..., None]
    return torch.stack(generated, dim=-1)
