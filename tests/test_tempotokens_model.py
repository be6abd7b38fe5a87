"""TempoTokens model layer: the mapper's full-size layout (meta device) and loading, its maths against the B.2
formulas in numpy, the per-frame text condition against a stock CLIP forward, and per-frame conditions in a stock
diffusers UNet3D (zeroscope's published config on the meta device, a tiny random one for behaviour)."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from avtool.errors import EXIT_WEIGHTS, WeightsError
from avtool.models.tempotokens import (
    LOCAL_HALF_WIDTHS,
    PLACEHOLDERS,
    AudioTokenMapper,
    FrameConditionProcessor,
    MapperTokens,
    add_placeholder_tokens,
    encode_frames,
    encode_text,
    frame_conditions,
    use_frame_conditions,
)

KEYS = Path(__file__).parent / "data" / "tempotokens_mapper_keys.json"
# cerspense/zeroscope_v2_576w unet/config.json as published, minus bookkeeping (_class_name, _diffusers_version,
# _name_or_path); the values are those of the sibling files cerspense/zeroscope_v1_320s and zeroscope_v2_XL, which
# are identical (the 576w file itself could not be fetched here).
ZEROSCOPE_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
ZEROSCOPE_UNET_PARAMS = 1_411_233_860  # x 2 bytes (fp16) = 2.82 GB, the published unet/diffusion_pytorch_model.bin
TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"), "block_out_channels": (16, 32), "layers_per_block": 1,
    "norm_num_groups": 8, "cross_attention_dim": 12, "attention_head_dim": 8,
}
WORDS = ("a", "dog", "barks")
MAX_LENGTH = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------------
# Mapper


def tiny_mapper(seed: int = 0) -> AudioTokenMapper:
    torch.manual_seed(seed)
    return AudioTokenMapper(input_size=24, hidden_size=20, output_size=16).eval()


def test_full_size_mapper_has_upstream_keys_and_shapes():
    reference = json.loads(KEYS.read_text())
    with torch.device("meta"):
        mapper = AudioTokenMapper()
    state = mapper.state_dict()
    assert {key: list(tensor.shape) for key, tensor in state.items()} == reference["keys"]
    assert sum(tensor.numel() for tensor in state.values()) == reference["num_params"] == 33_106_435


def test_from_state_dict_reads_sizes_and_strips_ddp_prefix():
    mapper = tiny_mapper()
    loaded = AudioTokenMapper.from_state_dict({f"module.{key}": value for key, value in mapper.state_dict().items()})
    assert (loaded.fc1.in_features, loaded.fc1.out_features, loaded.fc4.out_features) == (24, 20, 16)
    features = torch.randn(1, 8, 24)
    assert torch.equal(loaded(features, 4).class_token, mapper(features, 4).class_token)


def test_from_state_dict_names_a_renamed_key():
    state = tiny_mapper().state_dict()
    state["fga.pp_models.0.embed_x.weight"] = state.pop("fga.pp_models.0.embed_X.weight")
    with pytest.raises(WeightsError) as error:
        AudioTokenMapper.from_state_dict(state, "learned_embeds.pth")
    assert "unexpected keys: fga.pp_models.0.embed_x.weight" in error.value.message
    assert "missing keys: fga.pp_models.0.embed_X.weight" in error.value.message
    assert error.value.message.startswith("learned_embeds.pth: ")
    assert error.value.exit_code == EXIT_WEIGHTS


def test_from_state_dict_names_a_wrong_shape():
    state = tiny_mapper().state_dict()
    state["fc4.bias"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"wrong shapes: fc4\.bias \(3,\) != \(16,\)"):
        AudioTokenMapper.from_state_dict(state)


def test_mapper_output_shapes():
    tokens = tiny_mapper()(torch.randn(2, 48, 24), num_frames=24)
    assert tokens.temporal.shape == (2, 24, 16)
    assert len(tokens.local) == 4 and all(local.shape == (2, 24, 16) for local in tokens.local)
    assert tokens.class_token.shape == (2, 16)
    with pytest.raises(ValueError, match="50 audio tokens"):
        tiny_mapper()(torch.randn(1, 50, 24), num_frames=24)


def test_mapper_follows_the_upstream_formulas():
    mapper = tiny_mapper()
    features = torch.randn(2, 24, 24)
    with torch.no_grad():
        tokens = mapper(features, num_frames=6)
    weights = {key: value.double().numpy() for key, value in mapper.state_dict().items()}

    def linear(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    x = linear(gelu(linear(gelu(linear(features.double().numpy(), "fc1")), "fc2")), "fc3")
    temporal = linear(gelu(x.reshape(2, 6, 4, 16).mean(axis=2)), "fc4")
    np.testing.assert_allclose(tokens.temporal.numpy(), temporal, rtol=1e-5, atol=1e-5)
    for w, local in zip(LOCAL_HALF_WIDTHS, tokens.local, strict=True):
        expected = np.stack([temporal[:, max(i - w, 0):min(i + w, 6)].mean(axis=1) for i in range(6)], axis=1)
        np.testing.assert_allclose(local.numpy(), expected, rtol=1e-5, atol=1e-5)

    def conv(x, name):  # 1x1 Conv1d on (B, C, N)
        bias = weights.get(f"fga.{name}.bias", 0.0)
        return np.einsum("oc,bcn->bon", weights[f"fga.{name}.weight"][..., 0], x) + np.reshape(bias, (1, -1, 1))

    channels_first = temporal.transpose(0, 2, 1)
    unary = conv(np.maximum(conv(channels_first, "un_models.0.embed"), 0), "un_models.0.feature_reduce")[:, 0]
    embed_x, embed_y = (conv(channels_first, f"pp_models.0.embed_{k}") for k in "XY")
    embed_x, embed_y = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in (embed_x, embed_y))
    pairwise = np.einsum("bcn,bcm->bnm", embed_x, embed_y).mean(axis=2)
    mix = conv(np.stack([unary, pairwise], axis=1), "reduce_potentials.0")[:, 0]
    attention = np.exp(mix) / np.exp(mix).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(tokens.class_token.numpy(), np.einsum("bn,bnd->bd", attention, temporal), rtol=1e-5, atol=1e-5)


def test_mapper_is_deterministic_unless_pool_dropout_is_set():
    mapper, features = tiny_mapper(), torch.randn(1, 16, 24)
    assert torch.equal(mapper(features, 8).class_token, mapper(features, 8).class_token)
    mapper.pool_dropout = 0.5

    def with_seed(seed):
        return mapper(features, 8, generator=torch.Generator().manual_seed(seed)).class_token

    assert torch.equal(with_seed(1), with_seed(1))
    assert not torch.equal(with_seed(1), with_seed(2))


# ---------------------------------------------------------------------------------------------------------------
# Per-frame text condition


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[CLIPTextModel, CLIPTokenizer, tuple[int, ...]]:
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(config).eval()
    return text_encoder, tokenizer, add_placeholder_tokens(tokenizer, text_encoder)


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE vocabulary whose merges spell each of WORDS as one token."""
    symbols, merges = {"<|startoftext|>", "<|endoftext|>"}, []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        symbols.update(parts)
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            symbols.add(parts[0])
    (folder / "vocab.json").write_text(json.dumps({symbol: i for i, symbol in enumerate(sorted(symbols))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)


def random_tokens(batch: int, frames: int, width: int = 16) -> MapperTokens:
    return MapperTokens(torch.randn(batch, frames, width), tuple(torch.randn(batch, frames, width) for _ in range(4)),
                        torch.randn(batch, width))


def test_placeholders_follow_the_vocabulary_in_order(clip):
    text_encoder, tokenizer, ids = clip
    vocabulary = len(tokenizer) - len(PLACEHOLDERS)
    assert ids == tuple(range(vocabulary, vocabulary + 6))
    assert text_encoder.get_input_embeddings().num_embeddings == len(tokenizer)
    assert add_placeholder_tokens(tokenizer, text_encoder) == ids
    assert tokenizer("dog <temp> <class>").input_ids[2:4] == [ids[0], ids[5]]


def test_encode_frames_replaces_placeholder_embeddings_per_frame(clip):
    text_encoder, tokenizer, ids = clip
    prompt = "a dog <temp> barks <local1> <local2> <local3> <local4> <class>"
    tokens = random_tokens(batch=2, frames=3)
    with torch.no_grad():
        per_frame = encode_frames(text_encoder, tokenizer, prompt, tokens, ids)
    assert per_frame.shape == (6, MAX_LENGTH, 16)
    prompt_ids = tokenizer(prompt, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    for b in range(2):
        for f in range(3):
            values = [tokens.temporal[b, f], *(local[b, f] for local in tokens.local), tokens.class_token[b]]
            reference = copy.deepcopy(text_encoder)
            with torch.no_grad():
                reference.get_input_embeddings().weight[list(ids)] = torch.stack(values)
                expected = reference(input_ids=prompt_ids).last_hidden_state[0]
            torch.testing.assert_close(per_frame[b * 3 + f], expected, rtol=1e-5, atol=1e-6)
    first_placeholder = prompt_ids[0].tolist().index(ids[0])
    # CLIP's attention is causal: frames agree before the first placeholder and differ from it on
    assert torch.equal(per_frame[0, :first_placeholder], per_frame[1, :first_placeholder])
    assert not torch.allclose(per_frame[0, first_placeholder:], per_frame[1, first_placeholder:])


def test_encode_frames_without_placeholders_is_the_text_encoding(clip):
    text_encoder, tokenizer, ids = clip
    with torch.no_grad():
        per_frame = encode_frames(text_encoder, tokenizer, "a dog barks", random_tokens(batch=2, frames=4), ids)
        text = encode_text(text_encoder, tokenizer, "a dog barks", num_frames=4)
    assert text.shape == (4, MAX_LENGTH, 16)
    assert torch.equal(per_frame, text.repeat(2, 1, 1))


def test_encode_frames_passes_gradients_to_the_tokens(clip):
    text_encoder, tokenizer, ids = clip
    tokens = random_tokens(batch=1, frames=2)
    tokens.temporal.requires_grad_(True)
    encode_frames(text_encoder, tokenizer, "<temp> dog", tokens, ids).sum().backward()
    assert tokens.temporal.grad is not None and tokens.temporal.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# UNet3D with per-frame conditions


def test_zeroscope_unet_keeps_stock_keys_and_shapes():
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(ZEROSCOPE_UNET)
    stock = {key: tensor.shape for key, tensor in unet.state_dict().items()}
    stock_processors = dict(unet.attn_processors)
    use_frame_conditions(unet)
    assert {key: tensor.shape for key, tensor in unet.state_dict().items()} == stock
    assert sum(shape.numel() for shape in stock.values()) == ZEROSCOPE_UNET_PARAMS
    wrapped = {name for name, processor in unet.attn_processors.items() if isinstance(processor, FrameConditionProcessor)}
    assert len(wrapped) == 16  # the spatial transformers: 3 x 2 down, 1 mid, 3 x 3 up
    assert all(name.endswith("attn2.processor") and ".attentions." in name for name in wrapped)
    assert all(unet.attn_processors[name] is processor for name, processor in stock_processors.items() if name not in wrapped)


def tiny_unets(temporal: str) -> tuple[UNet3DConditionModel, UNet3DConditionModel]:
    """A stock tiny UNet3D and a per-frame-conditioned copy; temporal layers "random" or "identity"."""
    torch.manual_seed(0)
    stock = UNet3DConditionModel(**TINY_UNET).eval()
    with torch.no_grad():
        for module in stock.modules():
            output = (module.conv4[-1] if isinstance(module, TemporalConvLayer)
                      else module.proj_out if isinstance(module, TransformerTemporalModel) else None)
            if output is None:
                continue
            for parameter in output.parameters():
                if temporal == "identity":
                    parameter.zero_()
                else:
                    parameter.normal_(0.0, 0.1)
    return stock, use_frame_conditions(copy.deepcopy(stock))


@torch.no_grad()
def test_same_condition_for_every_frame_is_stock_diffusers():
    stock, unet = tiny_unets("random")
    latents, condition = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 12)
    expected = stock(latents, 10, condition).sample
    assert torch.equal(unet(latents, 10, frame_conditions(condition.repeat_interleave(3, dim=0), 3)).sample, expected)
    assert torch.equal(unet(latents, 10, condition).sample, expected)


@torch.no_grad()
def test_swapping_two_frames_conditions_swaps_those_frames():
    _, unet = tiny_unets("identity")
    latents = torch.randn(2, 4, 1, 8, 8).expand(-1, -1, 4, -1, -1)
    per_frame = torch.randn(2 * 4, 5, 12)
    swapped = per_frame.clone()
    swapped[[4 + 1, 4 + 3]] = per_frame[[4 + 3, 4 + 1]]  # clip 1, frames 1 and 3
    before = unet(latents, 10, frame_conditions(per_frame, 4)).sample
    after = unet(latents, 10, frame_conditions(swapped, 4)).sample
    assert torch.equal(after[1, :, [1, 3]], before[1, :, [3, 1]])
    assert torch.equal(after[1, :, [0, 2]], before[1, :, [0, 2]])
    assert torch.equal(after[0], before[0])
    assert not torch.allclose(before[1, :, 1], before[1, :, 3])


@torch.no_grad()
def test_per_frame_conditions_differ_from_one_repeated_condition():
    _, unet = tiny_unets("random")
    latents, per_frame = torch.randn(1, 4, 3, 8, 8), torch.randn(3, 5, 12)
    repeated = per_frame[:1].expand(3, -1, -1)
    outputs = [unet(latents, 10, frame_conditions(c, 3)).sample for c in (per_frame, repeated)]
    assert not torch.allclose(*outputs)


@torch.no_grad()
def test_a_context_of_the_wrong_width_is_refused():
    _, unet = tiny_unets("random")
    with pytest.raises(ValueError, match="one 12-wide context per frame"):
        unet(torch.randn(1, 4, 3, 8, 8), 10, torch.randn(1, 5, 18))


def test_frame_conditions_layout():
    per_frame = torch.randn(6, 5, 12)
    packed = frame_conditions(per_frame, 3)
    assert packed.shape == (2, 5, 36)
    assert torch.equal(packed[1, :, 12:24], per_frame[4])
    with pytest.raises(ValueError, match="whole number of clips"):
        frame_conditions(per_frame, 4)


def test_the_prompt_wraps_the_audio_tokens():
    from avtool.models.tempotokens import DEFAULT_PROMPT, prompt_with_tokens

    assert prompt_with_tokens(None) == prompt_with_tokens(" ") == DEFAULT_PROMPT == "<temp> <local1> <local2> <local3> <local4> <class>"
    assert prompt_with_tokens("a drummer on stage") == f"a drummer on stage {DEFAULT_PROMPT}"
    assert prompt_with_tokens("<class> in a <temp> hall") == "<class> in a <temp> hall"
