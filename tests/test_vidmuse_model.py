"""VidMuse model layer: tiny checkpoint in audiocraft's export layout, key conversion (full size on the meta device),
LM and video maths against upstream's formulas written out on the raw upstream tensors, the cached CFG token step
against a full recompute and transformers' generate(), the delay pattern, and EnCodec decoding (one call, in chunks)."""

import fractions
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import CLIPVisionConfig, GenerationConfig, MusicgenForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from avtool.errors import EXIT_WEIGHTS, WeightsError
from avtool.models.vidmuse import (
    UNKNOWN,
    VidMuseConfig,
    VidMuseStep,
    build_vidmuse,
    convert_state_dict,
    delay_constraint,
    delay_pattern,
    delay_template,
    first_input,
    generation_steps,
    load_vidmuse,
    to_upstream_state_dict,
    undo_delay_pattern,
    upstream_layout,
)
from avtool.sampling.tokens import guided_logits, sample_tokens
from avtool.weights.loading import load_checkpoint
from avtool.weights.tiny.vidmuse import XP_CFG, build

KEYS = Path(__file__).parent / "data" / "vidmuse_state_dict_keys.json"
SPECIAL, K = 2048, 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    build(folder)
    return folder


@pytest.fixture(scope="module")
def export(weights) -> dict:
    return load_checkpoint(weights / "vidmuse" / "state_dict.bin")


def load(weights: Path, export: dict, compression: dict | None = None):
    compression = compression or load_checkpoint(weights / "vidmuse" / "compression_state_dict.bin")
    return load_vidmuse(export, compression, weights / "encodec_32khz", weights / "clip-vit-base-patch32")


@pytest.fixture(scope="module")
def model(weights, export):
    return load(weights, export)


def frames(count: int, seed: int, batch: int = 1, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (batch, count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_tiny_checkpoint_is_an_audiocraft_export_that_loads_strictly(weights, export, model):
    assert set(export) == {"best_state", "xp.cfg", "version", "exported"} and export["exported"] is True
    assert load_checkpoint(weights / "vidmuse" / "compression_state_dict.bin")["pretrained"] == "facebook/encodec_32khz"
    best = export["best_state"]
    assert best["transformer.layers.1.cross_attention.in_proj_weight"].shape == (96, 32)  # packed q | k | v
    assert best["local_temporal_transformer.layers.1.1.fn.net.3.weight"].shape == (48, 192)
    assert set(best) == set(upstream_layout(model))
    assert all(torch.equal(best[key], tensor) for key, tensor in to_upstream_state_dict(model).items())
    assert (model.config.dim, model.config.num_layers, model.config.dim_head, model.config.train_global_frames) == (32, 2, 8, 64)
    assert (model.special_token, model.frame_size, model.tokens_per_frame) == (SPECIAL, 64, 5)
    assert (model.sample_rate, model.frame_rate) == (32000, 50)
    assert sorted(p.name for p in (weights / "clip-vit-base-patch32").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]


def test_renamed_or_misshapen_keys_and_foreign_configs_are_refused(weights, export, model, tmp_path):
    # files written with transformers < 4.31 carry CLIP's position_ids buffer: tolerated, not loaded
    convert_state_dict({**export["best_state"], "visual_encoder_model.vision_model.embeddings.position_ids": torch.arange(5)[None]}, model)
    best = dict(export["best_state"])
    best["transformer.layers.0.cross_norm.weight"] = best.pop("transformer.layers.0.norm_cross.weight")
    with pytest.raises(WeightsError) as refused:
        load(weights, {**export, "best_state": best})
    assert "unexpected keys: transformer.layers.0.cross_norm.weight" in refused.value.message
    assert "missing keys: transformer.layers.0.norm_cross.weight" in refused.value.message
    assert refused.value.exit_code == EXIT_WEIGHTS

    best = {**export["best_state"], "visual_feature_proj.weight": torch.zeros(33, 48)}
    with pytest.raises(WeightsError, match=r"wrong shapes: visual_feature_proj\.weight \(33, 48\) != \(32, 48\)"):
        load(weights, {**export, "best_state": best})

    rope = yaml.safe_dump({**XP_CFG, "transformer_lm": {**XP_CFG["transformer_lm"], "positional_embedding": "rope"}})
    with pytest.raises(WeightsError, match="transformer_lm.positional_embedding = 'rope' is not supported"):
        load(weights, {**export, "xp.cfg": rope})
    with pytest.raises(WeightsError, match="names codec 'facebook/encodec_24khz'"):
        load(weights, export, {"pretrained": "facebook/encodec_24khz", "exported": True})

    torch.save({**export, "version": fractions.Fraction(1, 2)}, tmp_path / "state_dict.bin")  # needs code to unpickle
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(tmp_path / "state_dict.bin")


def test_full_size_medium_checkpoint_layout_converts_every_key():
    reference = json.loads(KEYS.read_text())
    shapes = {key: tuple(shape) for key, shape in reference["keys"].items()}
    lm = {**XP_CFG["transformer_lm"], "dim": 1536, "num_heads": 24, "num_layers": 48}
    del lm["dim_head"]  # upstream default 64
    config = VidMuseConfig.from_xp_cfg(yaml.safe_dump({**XP_CFG, "transformer_lm": lm}))
    clip = CLIPVisionConfig()  # transformers' defaults are openai/clip-vit-base-patch32's vision tower
    assert (clip.hidden_size, clip.num_hidden_layers, clip.patch_size, clip.image_size) == (768, 12, 32, 224)
    model = build_vidmuse(config, clip)  # meta device

    assert upstream_layout(model) == shapes  # every key used, every shape equal
    assert sum(math.prod(shape) for shape in shapes.values()) == reference["num_params"]
    state = convert_state_dict({key: torch.empty(shape, device="meta") for key, shape in shapes.items()}, model)
    for prefix, module in model.checkpoint_modules().items():
        module.load_state_dict({k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")},
                               strict=True, assign=True)
    assert model.tokens_per_frame == 50 and model.lm.config.ffn_dim == 6144


def audiocraft_lm_logits(best: dict, num_heads: int, sequence: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """audiocraft's LMModel.forward on the raw upstream tensors: summed embeddings + sin positions, pre-LN layers with
    packed in_proj rows [q | k | v], cross-attention on `cross`, out_norm, one head per codebook."""
    batch, codebooks, steps = sequence.shape
    x = sum(F.embedding(sequence[:, k], best[f"emb.{k}.weight"]) for k in range(codebooks))
    dim = x.shape[-1]
    half = dim // 2
    phase = torch.arange(steps).view(1, -1, 1) / (10000 ** (torch.arange(half).view(1, 1, -1) / (half - 1)))
    x = x + torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def norm(h, name):
        return F.layer_norm(h, (dim,), best[f"{name}.weight"], best[f"{name}.bias"])

    def attend(q, k, v, causal):
        q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).flatten(2)

    layer = 0
    while f"transformer.layers.{layer}.norm1.weight" in best:
        p = f"transformer.layers.{layer}."
        q, k, v = (norm(x, p + "norm1") @ best[p + "self_attn.in_proj_weight"].T).chunk(3, dim=-1)
        x = x + attend(q, k, v, True) @ best[p + "self_attn.out_proj.weight"].T
        w_q, w_k, w_v = best[p + "cross_attention.in_proj_weight"].chunk(3)
        h = norm(x, p + "norm_cross")
        x = x + attend(h @ w_q.T, cross @ w_k.T, cross @ w_v.T, False) @ best[p + "cross_attention.out_proj.weight"].T
        x = x + F.gelu(norm(x, p + "norm2") @ best[p + "linear1.weight"].T) @ best[p + "linear2.weight"].T
        layer += 1
    x = norm(x, "out_norm")
    return torch.stack([x @ best[f"linears.{k}.weight"].T for k in range(codebooks)], dim=1)


def musicgen_from_checkpoint(model, export) -> MusicgenForCausalLM:
    """transformers' own MusicgenForCausalLM with the checkpoint's converted LM weights."""
    musicgen = MusicgenForCausalLM(model.config.decoder_config()).eval()
    converted = convert_state_dict(export["best_state"], model)
    musicgen.load_state_dict({k.removeprefix("lm."): v for k, v in converted.items() if k.startswith("lm.")}, strict=True)
    return musicgen


@torch.no_grad()
def test_lm_equals_musicgen_and_audiocraft_maths(model, export):
    generator = torch.Generator().manual_seed(0)
    sequence = torch.randint(0, SPECIAL + 1, (2, K, 7), generator=generator)
    video_emb = torch.randn(2, 9, 32, generator=generator)
    ours = model.logits(sequence, video_emb)
    assert ours.shape == (2, K, 7, SPECIAL)

    musicgen = musicgen_from_checkpoint(model, export)
    reference = musicgen(input_ids=sequence.reshape(2 * K, 7), encoder_hidden_states=video_emb).logits
    torch.testing.assert_close(ours, reference.reshape(2, K, 7, -1))
    upstream = audiocraft_lm_logits(export["best_state"], model.config.num_heads, sequence, video_emb)
    torch.testing.assert_close(ours, upstream, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_video_conditioning_equals_upstream_maths(model, export, weights):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    best, local, global_ = export["best_state"], frames(3, 1), frames(2, 2)
    processor = CLIPImageProcessorPil.from_pretrained(weights / "clip-vit-base-patch32")
    flat = local.flatten(0, 1).float()
    torch.testing.assert_close(model.video.pixel_values(flat), processor(images=flat, return_tensors="pt")["pixel_values"])

    clip = model.video.visual_encoder_model.vision_model

    def stream(video, name):
        # CLIP up to its encoder output: no post_layernorm (HF last_hidden_state, which upstream reads)
        hidden = clip.encoder(inputs_embeds=clip.pre_layrnorm(clip.embeddings(model.video.pixel_values(video.flatten(0, 1))))).last_hidden_state
        x = hidden + best[f"{name}_pos_embedding"]
        p = f"{name}_temporal_transformer."
        for i in range(2):
            h = F.layer_norm(x, (48,), best[f"{p}layers.{i}.0.norm.weight"], best[f"{p}layers.{i}.0.norm.bias"])
            q, k, v = ((h @ best[f"{p}layers.{i}.0.fn.to_qkv.weight"].T).chunk(3, -1))
            q, k, v = (t.unflatten(-1, (4, 8)).transpose(1, 2) for t in (q, k, v))
            attn = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1) @ v
            x = x + F.linear(attn.transpose(1, 2).flatten(2), best[f"{p}layers.{i}.0.fn.to_out.0.weight"], best[f"{p}layers.{i}.0.fn.to_out.0.bias"])
            h = F.layer_norm(x, (48,), best[f"{p}layers.{i}.1.norm.weight"], best[f"{p}layers.{i}.1.norm.bias"])
            h = F.gelu(F.linear(h, best[f"{p}layers.{i}.1.fn.net.0.weight"], best[f"{p}layers.{i}.1.fn.net.0.bias"]))
            x = x + F.linear(h, best[f"{p}layers.{i}.1.fn.net.3.weight"], best[f"{p}layers.{i}.1.fn.net.3.bias"])
        x = F.layer_norm(x, (48,), best[f"{p}norm.weight"], best[f"{p}norm.bias"])
        return x.reshape(video.shape[0], -1, 48)  # '(b t) q h -> b (t q) h'

    a, b = stream(local, "local"), stream(global_, "global")
    m = "multi_head_cross_attention."

    def linear(x, name):
        return F.linear(x, best[f"{m}{name}.weight"], best[f"{m}{name}.bias"])

    q, k, v = (t.unflatten(-1, (3, 16)).transpose(1, 2) for t in (linear(a, "query"), linear(b, "key"), linear(b, "value")))
    out = (torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, -1) @ v).transpose(1, 2).flatten(2)
    out = F.layer_norm(out + a, (48,), best[m + "norm1.weight"], best[m + "norm1.bias"])
    out = F.layer_norm(linear(out, "final_linear") + out, (48,), best[m + "norm2.weight"], best[m + "norm2.bias"])
    expected = F.linear(out, best["visual_feature_proj.weight"], best["visual_feature_proj.bias"])

    ours = model.encode_video(local, global_)
    assert ours.shape == (1, 3 * 5, 32)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    both = model.cfg_conditioning(local, global_)
    torch.testing.assert_close(both[:1], ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], model.encode_video(torch.zeros_like(local), torch.zeros_like(global_)), atol=1e-5, rtol=1e-5)


def full_recompute(model, first, steps, cond, scale, constrain):
    """Guided greedy decoding without a cache: the whole [cond; uncond] sequence through the LM for every token."""
    sequence = first
    for i in range(steps):
        logits = model.logits(torch.cat([sequence, sequence]), cond)[:, :, -1]
        next_tokens = constrain(guided_logits(logits, scale).argmax(-1), first.shape[-1] + i)
        sequence = torch.cat([sequence, next_tokens[..., None]], dim=-1)
    return sequence[..., first.shape[-1]:]


@torch.no_grad()
def test_cached_cfg_step_equals_full_recompute_across_windows(model):
    step = VidMuseStep(model.lm, rows=2, max_steps=8, max_video_tokens=25)
    calls = []

    def twice(tokens, position):  # every call repeated, as CUDA-graph capture does
        calls.append(int(position))
        step(tokens, position)
        return step(tokens, position)

    windows = [(frames(4, 3), frames(2, 4), 5, 0), (frames(3, 5), frames(2, 4), 4, 2)]  # second: shorter, 2-frame prompt
    codes = torch.zeros(1, K, 0, dtype=torch.long)
    for local, global_, num_frames, prompt_frames in windows:
        cond = model.cfg_conditioning(local, global_)
        prompt = codes[..., codes.shape[-1] - prompt_frames:]
        first = first_input(prompt, num_frames, SPECIAL)
        steps = generation_steps(num_frames, prompt_frames, K)
        constrain = delay_constraint(prompt, num_frames, SPECIAL)
        step.set_conditioning(cond)
        calls.clear()
        got = sample_tokens(twice, first, steps, temperature=0, cfg_scale=3.0, constrain=constrain)
        expected = full_recompute(model, first, steps, cond, 3.0, constrain)
        assert torch.equal(got, expected)
        assert calls == [0, *range(prompt_frames + 1, num_frames + K - 1)]  # the cache slots each call writes
        codes = undo_delay_pattern(torch.cat([first, got], dim=-1))
        assert codes.shape == (1, K, num_frames) and 0 <= codes.min() and codes.max() < SPECIAL
        assert torch.equal(codes[..., :prompt_frames], prompt)
        assert len(codes.unique()) > 2  # the tiny LM does not collapse onto one token
    with pytest.raises(ValueError, match="video_emb must be"):
        step.set_conditioning(torch.zeros(2, 26, 32))


@torch.no_grad()
def test_greedy_cfg_token_loop_equals_transformers_generate(model, export):
    num_frames, scale = 40, 3.0
    cond = model.cfg_conditioning(frames(4, 6), frames(2, 7))
    prompt = torch.zeros(1, K, 0, dtype=torch.long)
    step = VidMuseStep(model.lm, rows=2, max_steps=num_frames + K - 1, max_video_tokens=cond.shape[1])
    step.set_conditioning(cond)
    first = first_input(prompt, num_frames, SPECIAL)
    tokens = sample_tokens(step, first, generation_steps(num_frames, 0, K), temperature=0, cfg_scale=scale,
                           constrain=delay_constraint(prompt, num_frames, SPECIAL))
    ours = undo_delay_pattern(torch.cat([first, tokens], dim=-1))

    # generate() of a standalone MusicgenForCausalLM needs an EncoderDecoderCache (its default DynamicCache gets the
    # video keys/values appended to the self-attention entries) and a mask of ones (it would infer one from the pad
    # token, which is also the start token, and mask out step 0)
    musicgen = musicgen_from_checkpoint(model, export)
    config = GenerationConfig(pad_token_id=SPECIAL, bos_token_id=SPECIAL, decoder_start_token_id=SPECIAL, do_sample=False,
                              guidance_scale=scale, max_new_tokens=num_frames + K - 1, num_return_sequences=1, num_beams=1)
    theirs = musicgen.generate(input_ids=torch.full((K, 1), SPECIAL), attention_mask=torch.ones(K, 1, dtype=torch.long),
                               encoder_hidden_states=cond, generation_config=config,
                               cache=EncoderDecoderCache(DynamicCache(config=musicgen.config), DynamicCache(config=musicgen.config)))
    assert torch.equal(theirs.reshape(1, K, -1), ours)
    assert len(ours.unique()) > 2  # the tiny LM does not collapse onto one token


def test_delay_pattern_is_audiocrafts_layout():
    codes = torch.arange(1, 13).reshape(1, K, 3)
    S = SPECIAL
    assert delay_pattern(codes, S).tolist() == [[
        [S, 1, 2, 3, S, S, S],
        [S, S, 4, 5, 6, S, S],
        [S, S, S, 7, 8, 9, S],
        [S, S, S, S, 10, 11, 12],
    ]]
    assert torch.equal(undo_delay_pattern(delay_pattern(codes, S)), codes)
    template = delay_template(codes[..., :1], 3, S)
    U = UNKNOWN
    assert template[0, :, :4].tolist() == [[S, 1, U, U], [S, S, 4, U], [S, S, S, 7], [S, S, S, S]]
    assert first_input(codes[..., :1], 3, S).tolist() == [[[S, 1], [S, S], [S, S], [S, S]]]
    constrain = delay_constraint(codes[..., :1], 3, S)
    sampled = torch.full((1, K), 99)
    assert constrain(sampled, 2).tolist() == [[99, 4, S, S]]  # codebook 1 frame 0 comes from the prompt
    assert constrain(sampled, 6).tolist() == [[S, S, S, 99]]
    assert generation_steps(1500, 25, K) == 1478  # steps 26 .. 1503 of a 30 s window after a 0.5 s prompt


@torch.no_grad()
def test_decode_gives_32khz_mono_audio(model):
    codes = torch.randint(0, SPECIAL, (2, K, 6), generator=torch.Generator().manual_seed(0))
    audio = model.decode(codes)
    assert audio.shape == (2, 1, 6 * 640) and audio.dtype == torch.float32 and torch.isfinite(audio).all()
    with pytest.raises(ValueError, match="undo the delay pattern"):
        model.decode(torch.full((1, K, 2), SPECIAL))


@torch.no_grad()
def test_long_pieces_decode_in_chunks_that_match_the_one_call_decode(model, monkeypatch):
    codes = torch.randint(0, SPECIAL, (1, K, 700), generator=torch.Generator().manual_seed(1))
    one_call = model.codec.decode(codes[None], [None], return_dict=False)[0]
    # up to one chunk: upstream's single call, bit for bit
    assert torch.equal(model.decode(codes, chunk_frames=700), one_call)
    assert torch.equal(model.decode(codes[..., :300], chunk_frames=300), model.codec.decode(codes[None, ..., :300], [None], return_dict=False)[0])

    lengths, decode = [], model.codec.decode

    def recorded(frame, *args, **kwargs):
        lengths.append(frame.shape[-1])
        return decode(frame, *args, **kwargs)

    monkeypatch.setattr(model.codec, "decode", recorded)
    chunked = model.decode(codes, chunk_frames=300)
    assert lengths == [300 + 8, 250 + 300 + 8, 250 + 100]  # each chunk with 250 past and 8 future frames, cut at the ends
    assert chunked.shape == one_call.shape
    torch.testing.assert_close(chunked, one_call, rtol=0, atol=1e-6)  # measured: 9e-8 (float rounding)
