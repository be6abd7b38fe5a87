"""The autoregressive token loop on a tiny random MusicgenForCausalLM, and the logits filters against hand cases."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

from avtool.sampling.tokens import draw, guided_logits, sample_logits, sample_tokens, sampling_probs

B, K, V, D = 2, 4, 32, 32  # batch, codebooks, vocabulary, width
SPECIAL = V  # MusicGen's pad/BOS id: one past the head vocabulary (2048 for 2048-entry codebooks)
ENCODER_TOKENS = 5


@pytest.fixture(scope="module")
def lm() -> MusicgenForCausalLM:
    torch.manual_seed(0)
    config = MusicgenDecoderConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                   num_codebooks=K, max_position_embeddings=64, pad_token_id=SPECIAL, bos_token_id=SPECIAL)
    return MusicgenForCausalLM(config).eval()


def conditioning(seed: int) -> torch.Tensor:
    return torch.randn(B, ENCODER_TOKENS, D, generator=torch.Generator().manual_seed(seed))


class CachedMusicgenStep(nn.Module):
    """A model adapter as the loop wants it: `(tokens (rows, K, T), position) -> logits (rows, K, V)` for the next
    token, with transformers' StaticCache for self-attention. The cache length is set from `position` on every
    call, so repeating a call (CUDA-graph warm-up and capture) rewrites the same cache slots."""

    def __init__(self, lm: MusicgenForCausalLM, max_len: int) -> None:
        super().__init__()
        self.lm = lm
        self.cache = EncoderDecoderCache(StaticCache(config=lm.config, max_cache_len=max_len), DynamicCache(config=lm.config))

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.cache.self_attention_cache.layers:
            layer.cumulative_length.copy_(position)
        rows, codebooks, length = tokens.shape
        logits = self.lm(input_ids=tokens.reshape(rows * codebooks, length), encoder_hidden_states=encoder_hidden_states,
                         cache=self.cache, use_cache=True).logits
        return logits.reshape(rows, codebooks, length, -1)[:, :, -1]


def delay_pattern(tokens: torch.Tensor, position: int) -> torch.Tensor:
    """MusicGen's delay pattern after a BOS column: codebook q holds a real token from position q + 1 on."""
    return tokens.masked_fill(torch.arange(K)[None, :] >= position, SPECIAL)


def full_recompute(lm, first_input, num_steps, pick, encoder_hidden_states, constrain=None):
    """Decoding without a cache: the whole sequence through the model for every new token."""
    sequence = first_input
    for i in range(num_steps):
        logits = lm(input_ids=sequence.reshape(B * K, -1), encoder_hidden_states=encoder_hidden_states).logits
        next_tokens = pick(logits.reshape(B, K, sequence.shape[-1], -1)[:, :, -1])
        if constrain is not None:
            next_tokens = constrain(next_tokens, first_input.shape[-1] + i)
        sequence = torch.cat([sequence, next_tokens[..., None]], dim=-1)
    return sequence[..., first_input.shape[-1]:]


def test_cached_loop_equals_greedy_full_recompute(lm):
    steps, first = 6, torch.full((B, K, 1), SPECIAL)
    step = CachedMusicgenStep(lm, max_len=16)
    positions = []

    def twice(tokens, position, **kwargs):  # every call repeated, as StepRunner's capture does
        positions.append(int(position))
        step(tokens, position, **kwargs)
        return step(tokens, position, **kwargs)

    with torch.no_grad():
        expected = full_recompute(lm, first, steps, lambda logits: logits.argmax(-1), conditioning(1), delay_pattern)
    got = sample_tokens(twice, first, steps, temperature=0, extra_args={"encoder_hidden_states": conditioning(1)},
                        constrain=delay_pattern)
    assert got.shape == (B, K, steps) and torch.equal(got, expected)
    assert positions == list(range(steps))
    assert (got[:, 3, :3] == SPECIAL).all() and (got[:, 0] < V).all()  # the constraint was kept and fed back


def test_seeded_sampling_with_a_prompt_equals_full_recompute(lm):
    steps, prompt = 5, torch.randint(0, V, (B, K, 3), generator=torch.Generator().manual_seed(2))
    args = {"encoder_hidden_states": conditioning(3)}

    def run(seed):
        return sample_tokens(CachedMusicgenStep(lm, max_len=16), prompt, steps, generator=torch.Generator().manual_seed(seed),
                             top_k=8, extra_args=args)

    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = full_recompute(lm, prompt, steps, lambda logits: sample_logits(logits, generator, top_k=8), conditioning(3))
    assert torch.equal(run(5), expected)
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_cfg_loop_guides_cond_against_uncond(lm):
    steps, first, scale = 4, torch.full((B, K, 1), SPECIAL), 3.0
    cond, uncond = conditioning(4), conditioning(5)

    with torch.no_grad():
        sequence = first
        for _ in range(steps):  # two separate batches, no cache, guided by hand
            out = [lm(input_ids=sequence.reshape(B * K, -1), encoder_hidden_states=c).logits for c in (cond, uncond)]
            out = [logits.reshape(B, K, sequence.shape[-1], -1)[:, :, -1] for logits in out]
            next_tokens = (out[1] + (out[0] - out[1]) * scale).argmax(-1)
            sequence = torch.cat([sequence, next_tokens[..., None]], dim=-1)
    seen = []
    got = sample_tokens(CachedMusicgenStep(lm, max_len=8), first, steps, temperature=0, cfg_scale=scale,
                        extra_args={"encoder_hidden_states": torch.cat([cond, uncond])}, callback=seen.append)
    assert torch.equal(got, sequence[..., 1:])
    assert [c["position"] for c in seen] == [1, 2, 3, 4] and seen[0]["tokens"].shape == (B, K)


PROBS = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # not sorted, so the filters must map back to token ids


def test_filters_match_hand_computed_distributions():
    logits = PROBS.log()
    torch.testing.assert_close(sampling_probs(logits, top_k=0), PROBS)
    top2 = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.0]) / 0.7
    torch.testing.assert_close(sampling_probs(logits, top_k=2), top2)
    torch.testing.assert_close(sampling_probs(logits, top_p=0.6), top2)  # mass before 0.2 is 0.5 <= 0.6, before 0.15 is 0.7
    torch.testing.assert_close(sampling_probs(logits, top_p=0.45), torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(sampling_probs(logits, top_k=1, top_p=0.6), top2)  # top-p wins over top-k
    torch.testing.assert_close(sampling_probs(logits, top_k=250), PROBS)  # k beyond the vocabulary keeps all
    ties = torch.tensor([0.4, 0.2, 0.2, 0.2])
    torch.testing.assert_close(sampling_probs(ties.log(), top_k=2), ties)  # ties with the k-th stay, as in audiocraft
    hot = PROBS.sqrt() / PROBS.sqrt().sum()  # temperature 2: softmax(log p / 2)
    torch.testing.assert_close(sampling_probs(logits, temperature=2.0, top_k=0), hot)
    hot_top2 = torch.tensor([0, hot[1], 0, hot[3], 0]) / (hot[1] + hot[3])
    torch.testing.assert_close(sampling_probs(logits, temperature=2.0, top_k=2), hot_top2)
    assert sample_logits(logits[None].expand(3, -1), temperature=0).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="temperature"):
        sampling_probs(logits, temperature=-1.0)


def test_guidance_takes_cond_first():
    cond, uncond = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(guided_logits(torch.cat([cond, uncond]), 3.0), uncond + (cond - uncond) * 3.0)


def test_draw_equals_cpu_multinomial_and_follows_the_seed():
    probs = sampling_probs(torch.randn(3, K, V, generator=torch.Generator().manual_seed(0)), top_k=5)
    tokens = draw(probs, torch.Generator().manual_seed(11))
    reference = torch.multinomial(probs.reshape(-1, V), 1, generator=torch.Generator().manual_seed(11)).reshape(3, K)
    assert tokens.shape == (3, K) and torch.equal(tokens, reference)
    assert torch.equal(sample_logits(probs.log(), torch.Generator().manual_seed(11), top_k=0), tokens)
    many = torch.stack([draw(probs, torch.Generator().manual_seed(s)) for s in range(40)])
    assert len({tuple(t.flatten().tolist()) for t in many}) > 1
    assert torch.gather(probs.expand(40, -1, -1, -1), -1, many[..., None]).min() > 0  # never a filtered token
    with pytest.raises(ValueError, match="CPU generator"):
        draw(probs, SimpleNamespace(device=torch.device("cuda")))
