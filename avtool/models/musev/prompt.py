"""MuseV's prompt encoding (upstream `musev/utils/text_emb_util.py`, itself diffusers' community
`lpw_stable_diffusion.py`): A1111 attention weights, 75-token chunks with their own BOS/EOS, the weighted
hidden states rescaled to keep their mean, and the negative prompts of `configs/model/negative_prompt.py`.

Upstream's defaults are kept: at most 3 chunks (225 prompt tokens; more are cut off), BOS/EOS kept in every
chunk (`no_boseos_middle=False`), padding with the tokenizer's pad token before the last EOS.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from avtool.errors import BadInput

ROUND_BRACKET_WEIGHT = 1.1
SQUARE_BRACKET_WEIGHT = 1 / 1.1
MAX_CHUNKS = 3  # upstream's max_embeddings_multiples

_ATTENTION_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\]?)        # \( \) \[ \] \\ are literal; a lone backslash escapes nothing and vanishes
    | (?P<open>[(\[])
    | :(?P<weight>[+-]?[.\d]+)\)        # closes a round bracket with an explicit weight
    | (?P<close>[)\]])
    | [^\\()\[\]:]+ | :
    """,
    re.VERBOSE,
)

NEGATIVE_PROMPTS: dict[str, str] = {
    "Empty": "",
    "V1": "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry, tail, watermarks",
    "V2": "badhandv4, ng_deepnegative_v1_75t, (((multiple heads))), (((bad body))), (((two people))), ((extra arms)), ((deformed body)), (((sexy))), paintings,(((two heads))), ((big head)),sketches, (worst quality:2), (low quality:2), (normal quality:2), lowres, ((monochrome)), ((grayscale)), skin spots, acnes, skin blemishes, age spot, glans, (((nsfw))), nipples, extra fingers, (extra legs), (long neck), mutated hands, (fused fingers), (too many fingers)",
    "V3": "badhandv4, ng_deepnegative_v1_75t, bad quality",
    "V4": "badhandv4,ng_deepnegative_v1_75t,EasyNegativeV2,bad_prompt_version2-neg,bad quality",
    "V5": "(((multiple heads))), (((bad body))), (((two people))), ((extra arms)), ((deformed body)), (((sexy))), paintings,(((two heads))), ((big head)),sketches, (worst quality:2), (low quality:2), (normal quality:2), lowres, ((monochrome)), ((grayscale)), skin spots, acnes, skin blemishes, age spot, glans, (((nsfw))), nipples, extra fingers, (extra legs), (long neck), mutated hands, (fused fingers), (too many fingers)",
}
DEFAULT_VIDEO_NEGATIVE_PROMPT = "V2"


def negative_prompt(name_or_text: str) -> str:
    """The text of a `NEGATIVE_PROMPTS` entry, or `name_or_text` itself when it names none.

    V2, V3 and V4 name textual-inversion embeddings (badhandv4, ng_deepnegative_v1_75t, EasyNegativeV2,
    bad_prompt_version2-neg). Textual inversion is not implemented here, so those names are tokenised as plain
    text (several ordinary BPE tokens each) and encoded like any other words.
    """
    return NEGATIVE_PROMPTS.get(name_or_text, name_or_text)


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """A1111 attention syntax → (text, weight) runs, as upstream's `parse_prompt_attention`.

    `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w, nesting multiplies; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal. A bracket
    left open weights everything after it; a `)` or `]` with nothing open, or `:w)` with no `(` open, is text.
    Adjacent runs of equal weight are merged; an empty prompt is `[("", 1.0)]`.
    """
    runs: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        if match.group("escaped") is not None:
            runs.append([match.group("escaped"), 1.0])
        elif match.group("open"):
            (open_round if token == "(" else open_square).append(len(runs))
        elif match.group("weight") is not None and open_round:
            _multiply_from(runs, open_round.pop(), _weight_value(match.group("weight")))
        elif token == ")" and open_round:
            _multiply_from(runs, open_round.pop(), ROUND_BRACKET_WEIGHT)
        elif token == "]" and open_square:
            _multiply_from(runs, open_square.pop(), SQUARE_BRACKET_WEIGHT)
        else:
            runs.append([token, 1.0])
    for start in open_round:
        _multiply_from(runs, start, ROUND_BRACKET_WEIGHT)
    for start in open_square:
        _multiply_from(runs, start, SQUARE_BRACKET_WEIGHT)
    return _merge_equal_weights(runs) if runs else [("", 1.0)]


def _multiply_from(runs: list[list], start: int, factor: float) -> None:
    for run in runs[start:]:
        run[1] *= factor


def _weight_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"prompt weight {text!r} is not a number", hint="write weights as (words:1.3)") from None


def _merge_equal_weights(runs: list[list]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def encode_weighted_prompt(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str,
                           max_chunks: int | None = MAX_CHUNKS) -> torch.Tensor:
    """(1, 77·k, D) CLIP hidden states of `prompt` with its attention weights applied; k = its 75-token chunks
    (at most `max_chunks`, None for no limit; tokens beyond are dropped with a warning)."""
    tokens, weights = _tokens_and_weights(tokenizer, prompt)
    chunks = _chunks_for(tokenizer, len(tokens), max_chunks)
    return _encode(text_encoder, tokenizer, tokens, weights, chunks)


def encode_prompt_pair(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str, negative: str,
                       max_chunks: int | None = MAX_CHUNKS) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative_embeds, prompt_embeds), both (1, 77·k, D) with k the chunks of the longer of the two, so they
    stack for classifier-free guidance. The shorter one is padded before encoding, as upstream does, so its padding
    chunks take part in its mean rescaling."""
    prompt_tokens, prompt_weights = _tokens_and_weights(tokenizer, prompt)
    negative_tokens, negative_weights = _tokens_and_weights(tokenizer, negative)
    chunks = _chunks_for(tokenizer, max(len(prompt_tokens), len(negative_tokens)), max_chunks)
    return (_encode(text_encoder, tokenizer, negative_tokens, negative_weights, chunks),
            _encode(text_encoder, tokenizer, prompt_tokens, prompt_weights, chunks))


def _tokens_and_weights(tokenizer: CLIPTokenizer, prompt: str) -> tuple[list[int], list[float]]:
    """Token ids without BOS/EOS and one weight per token. Each weighted run is tokenised on its own, as upstream."""
    tokens: list[int] = []
    weights: list[float] = []
    for text, weight in parse_prompt_weights(prompt):
        # verbose=False: no "longer than 77 tokens" warning, chunking handles long runs
        ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        tokens += ids
        weights += [weight] * len(ids)
    return tokens, weights


def _chunks_for(tokenizer: CLIPTokenizer, n_tokens: int, max_chunks: int | None) -> int:
    chunks = max(1, math.ceil(n_tokens / _chunk_body(tokenizer)))
    return chunks if max_chunks is None else min(chunks, max_chunks)


def _chunk_body(tokenizer: CLIPTokenizer) -> int:
    """Prompt tokens per chunk: the encoder's window less BOS and EOS."""
    return tokenizer.model_max_length - 2


def _encode(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, tokens: list[int], weights: list[float],
            chunks: int) -> torch.Tensor:
    ids, token_weights = _chunked(tokenizer, tokens, weights, chunks)
    hidden = text_encoder(ids.to(text_encoder.device))[0]
    hidden = hidden.reshape(1, -1, hidden.shape[-1])
    return _apply_weights(hidden, token_weights.to(hidden.device, hidden.dtype).reshape(1, -1))


def _chunked(tokenizer: CLIPTokenizer, tokens: list[int], weights: list[float],
             chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunks, 77) token ids, each row BOS + 75 tokens + EOS, and their weights (1.0 at BOS, EOS and padding)."""
    body = _chunk_body(tokenizer)
    capacity = chunks * body
    if len(tokens) > capacity:
        warnings.warn(f"prompt cut to {capacity} tokens (of {len(tokens)})", stacklevel=4)  # points at the caller of encode_*
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fill = capacity - min(len(tokens), capacity)
    ids = torch.tensor(tokens[:capacity] + [pad] * fill).reshape(chunks, body)
    token_weights = torch.tensor(weights[:capacity] + [1.0] * fill).reshape(chunks, body)
    ids = torch.cat([torch.full((chunks, 1), tokenizer.bos_token_id), ids, torch.full((chunks, 1), tokenizer.eos_token_id)], 1)
    token_weights = torch.nn.functional.pad(token_weights, (1, 1), value=1.0)
    return ids, token_weights


def _apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Upstream's rule: hidden states × their token's weight, then the whole sequence rescaled so its mean over
    tokens and channels is what it was before weighting (means taken in float32).

    Where the weighted mean is exactly 0 (a freshly initialised final LayerNorm: every token has zero mean) the
    rescale is skipped; upstream divides by it and returns NaN.
    """
    mean_before = hidden.float().mean(dim=(-2, -1), keepdim=True).to(hidden.dtype)
    weighted = hidden * weights.unsqueeze(-1)
    mean_after = weighted.float().mean(dim=(-2, -1), keepdim=True).to(hidden.dtype)
    rescale = torch.where(mean_after == 0, torch.ones_like(mean_after), mean_before / mean_after)
    return weighted * rescale
