import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from avtool.errors import BadInput
from avtool.models.musev.prompt import (
    DEFAULT_VIDEO_NEGATIVE_PROMPT,
    NEGATIVE_PROMPTS,
    encode_prompt_pair,
    encode_weighted_prompt,
    negative_prompt,
    parse_prompt_weights,
)
from avtool.weights.tiny.tempotokens import write_clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    # One token per character, so a prompt's length in tokens is easy to control.
    return write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


def tiny_clip(tokenizer, layers: int) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    encoder = tiny_clip(tokenizer, layers=2)
    # A fresh final LayerNorm gives every token zero mean, which would make the mean rescaling 0/0; trained CLIP's does not.
    torch.nn.init.normal_(encoder.final_layer_norm.weight, 1.0, 0.2)
    torch.nn.init.normal_(encoder.final_layer_norm.bias, 0.3, 0.2)
    return encoder


def plain_clip(text_encoder, tokenizer, ids: list[int]) -> torch.Tensor:
    """CLIP hidden states of [BOS] + ids + [EOS] padded to 77."""
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    row += [tokenizer.pad_token_id] * (77 - len(row))
    with torch.no_grad():
        return text_encoder(torch.tensor([row]))[0]


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize(("text", "expected"), [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("a ((word))", [("a ", 1.0), ("word", 1.1 * 1.1)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
    ("a (word:1.5) (word:0.25)", [("a ", 1.0), ("word", 1.5), (" ", 1.0), ("word", 0.25)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    (r"a \\ b\c", [("a \\ bc", 1.0)]),  # a lone backslash is dropped, as upstream
    ("stray) and] word:2)", [("stray) and] word:2)", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("", [("", 1.0)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("(masterpiece, best quality, highres:1),(1boy, solo:1),(eye blinks:1.8)",
     [("masterpiece, best quality, highres,1boy, solo,", 1.0), ("eye blinks", 1.8)]),
])
def test_parse_prompt_weights(text, expected):
    parsed = parse_prompt_weights(text)
    assert [t for t, _ in parsed] == [t for t, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected])


def test_malformed_weight_is_bad_input():
    with pytest.raises(BadInput):
        parse_prompt_weights("(word:1.2.3)")


def test_unit_weights_equal_plain_clip(text_encoder, tokenizer):
    prompt = "a cat, sitting on a mat"
    with torch.no_grad():
        encoded = encode_weighted_prompt(text_encoder, tokenizer, prompt)
    plain = text_encoder(tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    assert encoded.shape == (1, 77, 32)
    assert torch.equal(encoded, plain.detach())


def test_weighted_word_scales_then_keeps_mean(text_encoder, tokenizer):
    with torch.no_grad():
        encoded = encode_weighted_prompt(text_encoder, tokenizer, "a (cat:1.5) b")
    plain = plain_clip(text_encoder, tokenizer, ids_of(tokenizer, "a cat b"))
    weights = torch.ones(1, 77, 1)
    weights[:, 2:5] = 1.5  # BOS, "a", then the three tokens of "cat"
    weighted = plain * weights
    expected = weighted * (plain.mean() / weighted.mean())
    torch.testing.assert_close(encoded, expected)
    torch.testing.assert_close(encoded.mean(), plain.mean())


def test_zero_mean_encoder_is_not_rescaled(tokenizer):
    with torch.no_grad():
        encoded = encode_weighted_prompt(tiny_clip(tokenizer, layers=1), tokenizer, "x" * 100)
    assert torch.isfinite(encoded).all()


def test_long_prompt_is_encoded_in_chunks(text_encoder, tokenizer):
    ids = ids_of(tokenizer, "x" * 100)
    assert len(ids) == 100
    with torch.no_grad():
        encoded = encode_weighted_prompt(text_encoder, tokenizer, "x" * 100)
    assert encoded.shape == (1, 154, 32)
    torch.testing.assert_close(encoded[:, :77], plain_clip(text_encoder, tokenizer, ids[:75]))
    torch.testing.assert_close(encoded[:, 77:], plain_clip(text_encoder, tokenizer, ids[75:]))


def test_prompt_beyond_max_chunks_is_cut(text_encoder, tokenizer):
    with torch.no_grad(), pytest.warns(UserWarning, match="cut to 225"):
        assert encode_weighted_prompt(text_encoder, tokenizer, "x" * 300).shape == (1, 231, 32)
    with torch.no_grad(), pytest.warns(UserWarning, match="cut to 75"):
        assert encode_weighted_prompt(text_encoder, tokenizer, "x" * 300, max_chunks=1).shape == (1, 77, 32)
    with torch.no_grad():
        assert encode_weighted_prompt(text_encoder, tokenizer, "x" * 300, max_chunks=None).shape == (1, 308, 32)


def test_pair_pads_the_shorter_prompt(text_encoder, tokenizer):
    negative = NEGATIVE_PROMPTS["V1"]
    with torch.no_grad():
        negative_embeds, prompt_embeds = encode_prompt_pair(text_encoder, tokenizer, "a cat", negative)
        alone = encode_weighted_prompt(text_encoder, tokenizer, "a cat")
    chunks = -(-len(ids_of(tokenizer, negative)) // 75)
    assert chunks > 1
    assert negative_embeds.shape == prompt_embeds.shape == (1, 77 * chunks, 32)
    torch.testing.assert_close(prompt_embeds[:, :77], alone)
    torch.testing.assert_close(prompt_embeds[:, 77:154], plain_clip(text_encoder, tokenizer, []))


def test_negative_prompts():
    assert set(NEGATIVE_PROMPTS) == {"Empty", "V1", "V2", "V3", "V4", "V5"}
    assert NEGATIVE_PROMPTS["V2"].startswith("badhandv4, ng_deepnegative_v1_75t, (((multiple heads)))")
    assert negative_prompt(DEFAULT_VIDEO_NEGATIVE_PROMPT) == NEGATIVE_PROMPTS["V2"]
    assert negative_prompt("Empty") == ""
    assert negative_prompt("blurry, lowres") == "blurry, lowres"
