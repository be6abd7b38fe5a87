"""MusicInfuser transformer on tiny weights: adapter math, LoRA merge, audio path, wav2vec features."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import MochiTransformer3DModel

from avtool.models.mochi import fp32_parameter_names
from avtool.models.musicinfuser import (
    AudioCrossAttention,
    AudioProjector,
    Wav2VecEncoder,
    audio_window_mask,
)
from avtool.pipelines import dance as pipeline
from avtool.weights.tiny.musicinfuser import LORA_KWARGS, TINY_AUDIO_LAYERS, adapter_state_dict, write_adapter


def inputs(batch=2, frames=3, seed=0):
    """Latents, T5 states, mask (second sample with padded text), timesteps for the tiny DiT."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 12, frames, 4, 6, generator=generator)
    text = torch.randn(batch, 10, 32, generator=generator)
    mask = torch.ones(batch, 10, dtype=torch.bool)
    mask[-1, 4:] = False
    timestep = torch.full((batch,), 700.0)
    return {"hidden_states": latents, "encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": timestep}


def audio(seconds=145 / 30 + 0.09, seed=0):
    return np.random.default_rng(seed).standard_normal(int(np.ceil(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def encoder(tiny_weights):
    return Wav2VecEncoder.from_folder(tiny_weights / "wav2vec2-base-960h")


@pytest.fixture(scope="module")
def dance_model(tiny_weights):
    return pipeline.load_transformer(pipeline.check_weights(tiny_weights), "cpu", torch.float32)


@pytest.fixture(scope="module")
def base_model(tiny_weights):
    return pipeline.load_transformer(pipeline.check_weights(tiny_weights), "cpu", torch.float32, adapter=False)


def test_without_audio_equals_diffusers_mochi(tiny_weights, base_model):
    diffusers_model = MochiTransformer3DModel.from_pretrained(tiny_weights / "mochi-1-preview" / "transformer").eval()
    with torch.no_grad():
        expected = diffusers_model(**inputs(), return_dict=False)[0]
        assert torch.equal(base_model(**inputs()), expected)
        assert torch.equal(base_model(**inputs(), return_dict=True).sample, expected)
    assert base_model.audio_projection is None
    assert len(base_model.audio_cross_attn_blocks) == 0
    with pytest.raises(ValueError, match="without the audio adapter"):
        base_model(**inputs(), audio_features=torch.zeros(1, 5, 32))


def test_zero_adapter_equals_base_model(tiny_weights, tmp_path, base_model, encoder):
    weights = shutil.copytree(tiny_weights, tmp_path / "weights")
    write_adapter(weights / "musicinfuser" / "musicinfuser.safetensors", zero_outputs=True)
    zero_adapter = pipeline.load_transformer(pipeline.check_weights(weights), "cpu", torch.float32)
    with torch.no_grad():
        expected = base_model(**inputs())
        assert torch.equal(zero_adapter(**inputs()), expected)
        assert torch.equal(zero_adapter(**inputs(), audio_features=encoder(audio())), expected)


def lora_reference(base: MochiTransformer3DModel, genmo: dict[str, torch.Tensor]) -> list:
    """Hook genmo's unmerged LoRA (x·Aᵀ·Bᵀ·alpha/rank on packed q|k|v rows) onto the diffusers projections."""
    dim = base.config.num_attention_heads * base.config.attention_head_dim
    scale = {"qkv": LORA_KWARGS["qkv_proj_lora_alpha"] / LORA_KWARGS["qkv_proj_lora_rank"],
             "proj": LORA_KWARGS["out_proj_lora_alpha"] / LORA_KWARGS["out_proj_lora_rank"]}
    handles = []

    def add_lora(module, down, up, s):
        def hook(_, args, output):
            return output + (args[0] @ down.float().T @ up.float().T) * s
        handles.append(module.register_forward_hook(hook))

    for i, block in enumerate(base.transformer_blocks):
        attn, prefix = block.attn1, f"blocks.{i}.attn."
        for projection, names in (("qkv_x", ("to_q", "to_k", "to_v")), ("qkv_y", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for row, name in enumerate(names):
                up = genmo[prefix + projection + ".lora_B"][row * dim:(row + 1) * dim]
                add_lora(getattr(attn, name), genmo[prefix + projection + ".lora_A"], up, scale["qkv"])
        add_lora(attn.to_out[0], genmo[prefix + "proj_x.lora_A"], genmo[prefix + "proj_x.lora_B"], scale["proj"])
        if hasattr(attn, "to_add_out"):
            add_lora(attn.to_add_out, genmo[prefix + "proj_y.lora_A"], genmo[prefix + "proj_y.lora_B"], scale["proj"])
    return handles


def test_merged_lora_equals_unmerged_lora_math(tiny_weights, dance_model):
    reference = MochiTransformer3DModel.from_pretrained(tiny_weights / "mochi-1-preview" / "transformer").eval()
    with torch.no_grad():
        base_output = reference(**inputs(), return_dict=False)[0]
        handles = lora_reference(reference, adapter_state_dict())
        assert len(handles) == 8 * 4 - 1  # 8 projections per block, no text output projection in the last block
        expected = reference(**inputs(), return_dict=False)[0]
        merged = dance_model(**inputs())
    assert not torch.allclose(expected, base_output, atol=1e-3)  # the LoRA matters
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_lora_is_merged_in_fp32_then_cast_and_genmos_fp32_parameters_stay_fp32(tiny_weights, dance_model):
    bf16_model = pipeline.load_transformer(pipeline.check_weights(tiny_weights), "cpu", torch.bfloat16)
    keep_fp32 = fp32_parameter_names(bf16_model)
    assert "pos_frequencies" in keep_fp32 and len(keep_fp32) == 1 + 4 * 4  # RoPE + q/k norms of both streams, 4 blocks
    for name, parameter in bf16_model.named_parameters():
        dtype = torch.float32 if name in keep_fp32 else torch.bfloat16
        assert parameter.dtype == dtype, name
        assert torch.equal(parameter, dance_model.get_parameter(name).to(dtype)), name
    with torch.no_grad():  # and the mixed-precision model runs
        out = bf16_model(**{k: v.to(torch.bfloat16) if v.is_floating_point() and k != "timestep" else v for k, v in inputs().items()})
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_audio_modules_load_verbatim_and_change_the_output(dance_model, encoder):
    genmo = adapter_state_dict()
    state = dance_model.state_dict()
    audio_keys = [key for key in genmo if key.startswith("audio_")]
    assert audio_keys and all(torch.equal(state[key], genmo[key].float()) for key in audio_keys)
    assert dance_model.config.audio_cross_attn_layers == TINY_AUDIO_LAYERS

    with torch.no_grad():
        music, other_music = encoder(audio(seed=0)), encoder(audio(seed=1))
        with_music = dance_model(**inputs(), audio_features=music)
        assert torch.equal(dance_model(**inputs(), audio_features=music), with_music)
        assert not torch.allclose(dance_model(**inputs(), audio_features=other_music), with_music, atol=1e-4)
        assert not torch.allclose(dance_model(**inputs()), with_music, atol=1e-4)
        # one clip for both CFG branches == the clip repeated per sample
        torch.testing.assert_close(dance_model(**inputs(), audio_features=music.expand(2, -1, -1)), with_music)


def test_audio_cross_attention_is_applied_after_the_listed_blocks(dance_model, encoder):
    """Hooks record the visual tokens after each block; the adapter must change them exactly from block 1 on."""
    seen = {True: [], False: []}
    with torch.no_grad():
        for with_audio in (True, False):
            handles = [block.register_forward_hook(lambda _, __, out, w=with_audio: seen[w].append(out[0].clone()))
                       for block in dance_model.transformer_blocks]
            dance_model(**inputs(), audio_features=encoder(audio()) if with_audio else None)
            for handle in handles:
                handle.remove()
    same = [torch.equal(a, b) for a, b in zip(seen[True], seen[False], strict=True)]
    assert same == [True, True, False, False]  # block 0 and 1 outputs identical; cross-attn after block 1 changes 2, 3


def test_audio_projector_resamples_nearest_in_time():
    torch.manual_seed(0)
    projector = AudioProjector(audio_dim=6, dim=8)
    features = torch.randn(1, 245, 6)
    with torch.no_grad():
        projected = projector(features, 25)
        assert projected.shape == (1, 25, 8)
        source = [int(np.floor(i * 245 / 25)) for i in range(25)]  # floor(i·9.8), as F.interpolate 'nearest'
        torch.testing.assert_close(projected, projector.projection(features[:, source]))
        torch.testing.assert_close(projector(features[:, :25], 25), projector.projection(features[:, :25]))


def test_audio_cross_attention_matches_multi_head_attention_by_hand():
    torch.manual_seed(0)
    attention = AudioCrossAttention(dim=16, num_heads=8)
    torch.nn.init.normal_(attention.to_out.weight)
    tokens, music = torch.randn(2, 30, 16), torch.randn(2, 5, 16)
    q, k, v = (layer(x).view(2, -1, 8, 2).transpose(1, 2) for layer, x in
               ((attention.to_q, tokens), (attention.to_k, music), (attention.to_v, music)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2**0.5, dim=-1)
    expected = tokens + attention.to_out((weights @ v).transpose(1, 2).reshape(2, 30, 16))
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens, music), expected)
    assert torch.equal(AudioCrossAttention(dim=16)(tokens, music), tokens)  # zero-initialised output projection


@pytest.mark.parametrize("window", [0, 1, None])
def test_audio_attention_window_lets_a_frame_hear_only_nearby_audio(window):
    """Frame-major tokens of 4 latent frames, 3 each: changing audio frame 3 changes exactly the frames within
    `window` of it (None: upstream's attention, every frame)."""
    torch.manual_seed(0)
    attention = AudioCrossAttention(dim=16, num_heads=8)
    torch.nn.init.normal_(attention.to_out.weight)
    tokens, music = torch.randn(1, 12, 16), torch.randn(1, 4, 16)
    changed_music = music.clone()
    changed_music[:, 3] += 1
    mask = None if window is None else audio_window_mask(4, 3, window, torch.device("cpu"))
    with torch.no_grad():
        moved = (attention(tokens, changed_music, mask) - attention(tokens, music, mask)).abs().amax(-1)[0]
    heard = {0: [3], 1: [2, 3], None: [0, 1, 2, 3]}[window]
    assert [frame for frame in range(4) if moved[3 * frame : 3 * frame + 3].min() > 1e-4] == heard
    assert [frame for frame in range(4) if moved[3 * frame : 3 * frame + 3].max() > 0] == heard


def test_wav2vec_features_use_upstream_normalisation(encoder):
    wave = audio(seconds=73 / 30 + 0.09) * 0.3 + 0.1
    features = encoder(wave)
    assert features.shape == (1, 125, 32) and features.dtype == torch.float32
    normalised = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.no_grad():
        expected = encoder.model(torch.from_numpy(normalised)[None]).last_hidden_state
    torch.testing.assert_close(features, expected)
    assert encoder(audio(seconds=2.5)).shape[1] == 124  # training clips: 40,000 samples → 124 frames
    assert encoder(audio()).shape[1] == 245  # 145 frames → 78,774 samples → 245 frames


def test_gradient_checkpointing_gives_the_same_gradients(tiny_weights, encoder):
    model = pipeline.load_transformer(pipeline.check_weights(tiny_weights), "cpu", torch.float32).train()
    parameters = list(model.audio_cross_attn_blocks.parameters()) + list(model.audio_projection.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    music = encoder(audio())

    def gradients():
        model.zero_grad()
        model(**inputs(), audio_features=music).square().mean().backward()
        return [parameter.grad.clone() for parameter in parameters]

    plain = gradients()
    model.enable_gradient_checkpointing()
    checkpoint, calls = model._gradient_checkpointing_func, []
    model._gradient_checkpointing_func = lambda *args: calls.append(args[0]) or checkpoint(*args)
    for checkpointed, expected in zip(gradients(), plain, strict=True):
        torch.testing.assert_close(checkpointed, expected)
    assert calls == list(model.transformer_blocks)
    assert any(gradient.abs().sum() > 0 for gradient in plain)
