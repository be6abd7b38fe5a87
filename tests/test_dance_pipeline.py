"""The dance pipeline's pieces on tiny weights, in process: parity with diffusers' MochiPipeline, music and seeds."""

import math
import random
import shutil

import numpy as np
import pytest
import torch
from diffusers import MochiPipeline
from mediagen import clip, ffmpeg

from avtool.media import load_audio, probe
from avtool.media.resample import sinc_resample
from avtool.models.mochi import MochiFlowModel
from avtool.models.musicinfuser import Wav2VecEncoder
from avtool.pipelines import dance as pipeline
from avtool.pipelines.common import GenerationOptions
from avtool.sampling import CFGDenoiser, StepRunner, linear_quadratic_sigmas
from avtool.weights.layout import weights_variant
from avtool.weights.loading import load_pretrained
from avtool.weights.tiny.musicinfuser import write_adapter

FRAMES, HEIGHT, WIDTH, STEPS, CFG = 7, 32, 48, 3, 6.0


def features(weights, seed: int) -> torch.Tensor:
    wave = np.random.default_rng(seed).standard_normal(8000).astype(np.float32)
    return Wav2VecEncoder.from_folder(weights.wav2vec)(wave)


def generate(weights, seed: int, audio: torch.Tensor | None, transformer=None) -> torch.Tensor:
    text, mask = pipeline.encode_prompt(weights, pipeline.DEFAULT_PROMPT, "cpu", torch.float32)
    transformer = transformer or pipeline.load_transformer(weights, "cpu", torch.float32)
    step = StepRunner(CFGDenoiser(MochiFlowModel(transformer), CFG), "eager")
    noise = pipeline.initial_noise(seed, FRAMES, HEIGHT, WIDTH)
    return pipeline.sample_latents(step, noise, linear_quadratic_sigmas(STEPS), text, mask, audio, quiet=True)


@pytest.fixture(scope="module")
def zero_adapter_weights(tiny_weights, tmp_path_factory):
    """The tiny weights with the adapter's LoRA and cross-attention outputs at zero (a copy: the fixture is shared)."""
    root = tmp_path_factory.mktemp("zero") / "weights"
    shutil.copytree(tiny_weights, root)
    write_adapter(root / "musicinfuser" / "musicinfuser.safetensors", zero_outputs=True)
    return pipeline.check_weights(root)


def test_zero_adapter_latents_and_frames_equal_mochi_pipeline(zero_adapter_weights):
    weights, seed = zero_adapter_weights, 11
    ours = generate(weights, seed, features(weights, 0))
    mochi = MochiPipeline.from_pretrained(weights.mochi, force_zeros_for_empty_prompt=True)
    mochi.set_progress_bar_config(disable=True)
    call = dict(prompt=pipeline.DEFAULT_PROMPT, negative_prompt="", num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                num_inference_steps=STEPS, guidance_scale=CFG, max_sequence_length=256)
    reference = mochi(**call, generator=torch.Generator().manual_seed(seed), output_type="latent").frames
    assert ours.shape == reference.shape == (1, 12, 2, 4, 6)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)

    # and our decode equals the pipeline's (latent de-normalisation, VAE, [-1, 1] -> uint8)
    frames = pipeline.decode_latents(mochi.vae, ours, quiet=True)
    reference_frames = mochi(**call, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - np.round(reference_frames * 255).astype(int)).max() <= 1


def test_music_matters_and_a_seed_repeats_bit_for_bit(tiny_weights):
    weights = pipeline.check_weights(tiny_weights)
    transformer = pipeline.load_transformer(weights, "cpu", torch.float32)
    song_a, song_b = features(weights, 1), features(weights, 2)
    first = generate(weights, 5, song_a, transformer)
    assert torch.equal(first, generate(weights, 5, song_a, transformer))
    assert not torch.allclose(first, generate(weights, 5, song_b, transformer), atol=1e-4)
    assert not torch.allclose(first, generate(weights, 6, song_a, transformer), atol=1e-4)


def test_excerpt_is_seeded_padded_and_at_the_original_rate(tmp_path):
    song = tmp_path / "song.wav"
    ffmpeg("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(200+150*t)*t)|0.3*sin(2*PI*300*t):s=22050:d=3", str(song))
    info, request = probe(song).require_audio(), pipeline.DanceRequest(num_frames=13)
    length = int(np.ceil(22050 * (13 / 30 + 0.09)))
    start_a, start_b, start_c = (pipeline.excerpt_start(info, request, seed) for seed in (1, 1, 2))
    a, rate = pipeline.music_excerpt(song, info, request, start_a)
    assert rate == 22050 and a.shape == (2, length) and start_a == start_b != start_c
    excerpt, _ = load_audio(song, mono=False)
    first = round(start_a / 44100 * 22050)  # the start is drawn on upstream's 44.1 kHz grid
    np.testing.assert_allclose(a, excerpt[:, first:first + length], atol=1e-6)  # the window decoded is the one drawn
    late = pipeline.DanceRequest(num_frames=13, start=2.8)
    start = pipeline.excerpt_start(info, late, seed=1)
    tail, _ = pipeline.music_excerpt(song, info, late, start)
    assert start == round(2.8 * 44100) and tail.shape == (2, length)
    assert np.abs(tail[:, : int(0.15 * 22050)]).max() > 0.1 and not tail[:, int(0.25 * 22050):].any()  # zero-padded


def test_several_seeds_load_the_models_once(tiny_weights, tmp_path, monkeypatch):
    song = clip(tmp_path / "song.mp4", seconds=2, size="64x48")  # the music comes from the container's audio track
    loads = []
    real_load = pipeline.load_models
    monkeypatch.setattr(pipeline, "load_models", lambda *args: loads.append(args) or real_load(*args))
    opts = GenerationOptions(output_dir=tmp_path / "out", seeds=[1, 2, 3], steps=2, weights_dir=tiny_weights, quiet=True)
    results = list(pipeline.dance([song], pipeline.DanceRequest(num_frames=7), opts))
    assert len(loads) == 1
    assert [r["seed"] for r in results] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == [f"song_generated_seed{s}.mp4" for s in (1, 2, 3)]


def test_variant_only_folders_load(tiny_weights, tmp_path):
    """`download-weights --variant bf16` keeps only `*.bf16*` weight files; the VAE and T5 must still load."""
    from diffusers import AutoencoderKLMochi
    from transformers import T5EncoderModel

    for cls, name in ((AutoencoderKLMochi, "vae"), (T5EncoderModel, "text_encoder")):
        original = cls.from_pretrained(tiny_weights / "mochi-1-preview" / name)
        original.save_pretrained(tmp_path / name, variant="bf16", max_shard_size="20KB")
        assert weights_variant(tmp_path / name) == "bf16"
        loaded = load_pretrained(cls, tmp_path / name)
        for (key, expected), got in zip(original.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(expected, got), key
    assert weights_variant(tiny_weights / "mochi-1-preview" / "vae") is None


def test_excerpt_start_is_drawn_on_upstreams_44k_grid_whatever_the_rate(tmp_path):
    """Upstream re-encodes to 44.1 kHz before `randint`: a 48 kHz and a 44.1 kHz file of one length get one start."""
    request = pipeline.DanceRequest(num_frames=13)
    starts = {}
    for rate in (44100, 48000, 22050):
        path = tmp_path / f"song{rate}.wav"
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency=300:sample_rate={rate}:duration=5", str(path))
        starts[rate] = pipeline.excerpt_start(probe(path).require_audio(), request, seed=4)
    random.seed(4)
    upstream = random.randint(0, int(44100 * 5.0) - math.ceil(44100 * (13 / 30 + 0.09)))
    assert starts == {44100: upstream, 48000: upstream, 22050: upstream}


def test_wav2vec_input_is_upstreams_whole_song_resample_then_crop(tmp_path):
    """inference.py: the whole 44.1 kHz song through torchaudio's Resample, channel 0, crop at int(start/44100*16000)."""
    song = tmp_path / "song.wav"
    ffmpeg("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(200+150*t)*t)|0.3*sin(2*PI*3000*t):s=44100:d=4", str(song))
    info, request = probe(song).require_audio(), pipeline.DanceRequest(num_frames=13)
    start = pipeline.excerpt_start(info, request, seed=9)
    whole, _ = load_audio(song, mono=False)
    first, count = int(start / 44100 * 16000), math.ceil(16000 * (13 / 30 + 0.09))
    upstream = sinc_resample(whole[0], 44100, 16000)[first:first + count]
    got = pipeline.wav2vec_input(song, info, request, start)
    assert got.shape == (count,) and np.array_equal(got, upstream)
    # near the end of the song the crop runs out and is zero-padded, as upstream pads it
    end = pipeline.wav2vec_input(song, info, request, len(whole[0]) - 1000)
    assert end.shape == (count,) and not end[1000 * 16000 // 44100 + 50:].any()


def test_t5_runs_in_fp32_whatever_the_run_dtype(tiny_weights):
    weights = pipeline.check_weights(tiny_weights)
    fp32, _ = pipeline.encode_prompt(weights, "a dancer", "cpu", torch.float32)
    bf16, mask = pipeline.encode_prompt(weights, "a dancer", "cpu", torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, fp32.to(torch.bfloat16))  # encoded in fp32, then cast
    assert mask.dtype == torch.bool and not mask[0].any() and mask[1].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_device_draws_what_upstream_draws_on_cuda():
    torch.manual_seed(21)
    upstream = torch.randn(1, 12, 2, 4, 6, device="cuda")
    assert torch.equal(pipeline.initial_noise(21, 7, 32, 48, device="cuda"), upstream)
    assert not torch.equal(pipeline.initial_noise(21, 7, 32, 48).cuda(), upstream)
