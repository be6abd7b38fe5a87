"""D2M's audio autoencoder (dmae1d-ATC32-v3). Encoder: the full-size layout (meta device) against the key list derived
from the published model, the mel front end against a frame-by-frame numpy computation with librosa's HTK filterbank,
the whole forward pass against upstream's formulas written out on the raw state-dict tensors, tiny-size shapes and
range, and loading from a whole DMAE state dict. Whole DMAE: the full-size published layout and size, the decoder's
learned transform against a hand-written frame/overlap-add computation, decoding by v-diffusion, and loading tiny
folders written by the tiny builder (with and without the decoder's alias copies, broken ones refused)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avtool.errors import EXIT_WEIGHTS, WeightsError
from avtool.models.d2m import LATENT_CHANNELS, SAMPLES_PER_LATENT
from avtool.models.d2m.autoencoder import (
    CONFIG_FILE,
    DMAE,
    WEIGHTS_FILE,
    DMAEConfig,
    dmae_state_dict,
    load_dmae,
)
from avtool.models.d2m.diffusion import UPSTREAM_ALIASES
from avtool.models.d2m.encoder import (
    CHECKPOINT_PREFIX,
    LogMelSpectrogram,
    MelEncoder,
    MelEncoderConfig,
    htk_mel_filterbank,
    load_mel_encoder,
)
from avtool.weights.tiny.d2m import AUTOENCODER_CONFIG, AUTOENCODER_FOLDER, build_autoencoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PUBLISHED = json.loads((Path(__file__).parent / "data" / "dmae1d_atc32_v3_keys.json").read_text())
TINY = MelEncoderConfig(sample_rate=16000, n_fft=128, hop_length=32, win_length=128, mel_channels=16, channels=16,
                        multipliers=(1, 2), factors=(2,), num_blocks=(2,), out_channels=4, resnet_groups=4)


def seeded(shape: tuple[int, ...], seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> MelEncoder:
    model = MelEncoder(TINY).eval()
    with torch.no_grad():
        for index, parameter in enumerate(model.parameters()):
            parameter.copy_(seeded(tuple(parameter.shape), seed=index, scale=0.2))
    return model


# ---------------------------------------------------------------------------------------------------------------
# layout


def test_published_config_has_the_encoder_keys_and_shapes_of_the_checkpoint():
    with torch.device("meta"):
        model = MelEncoder()
    ours = {CHECKPOINT_PREFIX + key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    published = {key: shape for key, shape in PUBLISHED["keys"].items() if key.startswith(CHECKPOINT_PREFIX)}
    assert ours == published
    assert list(ours) == list(published)
    assert model.config.downsample_factor == PUBLISHED["config"]["downsample_factor"] == 512


def test_published_latent_lengths():
    config = MelEncoderConfig()
    assert config.latent_length(2**18) == 512  # archisound README: x [1, 2, 2**18] → z [1, 32, 512]
    assert config.latent_length(2**17) == 256  # D2M's [1, 32, 256] latents, under this model
    assert config.latent_length(48000) == 94


# ---------------------------------------------------------------------------------------------------------------
# mel front end


def test_filterbank_equals_librosa_htk_at_the_published_config():
    import librosa

    reference = librosa.filters.mel(sr=48000, n_fft=1024, n_mels=80, htk=True, norm=None).T
    np.testing.assert_allclose(htk_mel_filterbank(513, 80, 48000).numpy(), reference, atol=1e-6)


def numpy_log_mel(signal: np.ndarray, config: MelEncoderConfig) -> np.ndarray:
    """Reflect-pad, then one frame at a time: periodic Hann window, |rfft|, librosa's HTK filterbank, log floor."""
    import librosa

    n_fft, hop = config.n_fft, config.hop_length
    padded = np.pad(signal.astype(np.float64), (n_fft - hop) // 2, mode="reflect")
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    banks = librosa.filters.mel(sr=config.sample_rate, n_fft=n_fft, n_mels=config.mel_channels, htk=True, norm=None,
                                dtype=np.float64)
    columns = [banks @ np.abs(np.fft.rfft(padded[start:start + n_fft] * window))
               for start in range(0, len(padded) - n_fft + 1, hop)]
    return np.log(np.maximum(np.stack(columns, axis=1), 1e-5))


def test_log_mel_front_end_matches_numpy():
    t = np.arange(700) / TINY.sample_rate
    signal = 0.5 * np.sin(2 * math.pi * 440 * t) + 0.2 * np.sin(2 * math.pi * 3100 * t) + 0.01 * np.cos(17 * t)
    ours = LogMelSpectrogram(TINY)(torch.tensor(signal, dtype=torch.float32)[None]).squeeze(0).double().numpy()
    reference = numpy_log_mel(signal, TINY)
    assert ours.shape == reference.shape == (16, 700 // 32)
    # compared as magnitudes: float32 STFT rounding (~1e-7 of the peak) is large in the log of the faintest bands
    magnitude = np.exp(reference)
    np.testing.assert_allclose(np.exp(ours), magnitude, rtol=1e-4, atol=1e-6 * magnitude.max())


def test_log_mel_floors_silence_and_refuses_too_short_input():
    mel = LogMelSpectrogram(TINY)(torch.zeros(2, 3, 256))
    assert mel.shape == (2, 3, 16, 8)
    assert torch.allclose(mel, torch.full_like(mel, math.log(1e-5)))
    with pytest.raises(ValueError, match="more than 48 samples"):
        LogMelSpectrogram(TINY)(torch.zeros(1, 48))


# ---------------------------------------------------------------------------------------------------------------
# encoder forward


def reference_encoder(state: dict[str, torch.Tensor], waveform: torch.Tensor, config: MelEncoderConfig) -> torch.Tensor:
    """Upstream's Encoder1d on the numpy log mel: Patcher(resnet, 1 group) → per stage a kernel 2f+1 stride f conv and
    resnets → 1x1 conv → tanh, from the raw tensors."""
    batch, channels, _ = waveform.shape
    mels = [numpy_log_mel(waveform[b, c].double().numpy(), config) for b in range(batch) for c in range(channels)]
    x = torch.tensor(np.stack(mels)).float().reshape(batch, channels * config.mel_channels, -1)

    def resnet(prefix: str, x: torch.Tensor, groups: int) -> torch.Tensor:
        h = x
        for block in ("block1", "block2"):
            h = F.group_norm(h, groups, state[f"{prefix}{block}.groupnorm.weight"], state[f"{prefix}{block}.groupnorm.bias"])
            h = F.conv1d(F.silu(h), state[f"{prefix}{block}.project.weight"], state[f"{prefix}{block}.project.bias"], padding=1)
        skip = F.conv1d(x, state[f"{prefix}to_out.weight"], state[f"{prefix}to_out.bias"]) if f"{prefix}to_out.weight" in state else x
        return h + skip

    x = resnet("to_in.block.", x, groups=1)
    for stage, (factor, blocks) in enumerate(zip(config.factors, config.num_blocks, strict=True)):
        x = F.conv1d(x, state[f"downsamples.{stage}.downsample.weight"], state[f"downsamples.{stage}.downsample.bias"],
                     stride=factor, padding=factor)
        for block in range(blocks):
            x = resnet(f"downsamples.{stage}.blocks.{block}.", x, config.resnet_groups)
    return torch.tanh(F.conv1d(x, state["to_out.weight"], state["to_out.bias"]))


def test_encoder_matches_upstream_formulas(tiny):
    waveform = seeded((2, 2, 640), seed=11)
    with torch.no_grad():
        ours = tiny(waveform)
    reference = reference_encoder(tiny.state_dict(), waveform, TINY)
    assert ours.shape == (2, 4, 10)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("num_samples", [256, 640, 1000])
def test_latent_shape_and_range(tiny, num_samples):
    with torch.no_grad():
        latent = tiny(seeded((3, 2, num_samples), seed=num_samples, scale=5.0))
    assert latent.shape == (3, TINY.out_channels, TINY.latent_length(num_samples))
    assert latent.abs().max() <= 1.0
    if num_samples % TINY.downsample_factor == 0:
        assert latent.shape[-1] == num_samples // TINY.downsample_factor


def test_encoder_refuses_wrong_channel_count(tiny):
    with pytest.raises(ValueError, match=r"\(batch, 2, samples\)"):
        tiny(torch.zeros(1, 1, 512))


# ---------------------------------------------------------------------------------------------------------------
# loading


def test_load_from_a_whole_dmae_state_dict(tiny):
    state = {CHECKPOINT_PREFIX + key: tensor.clone() for key, tensor in tiny.state_dict().items()}
    state["model.net.blocks.0.weight"] = torch.zeros(256, 2, 64)  # decoder keys are not the encoder's business
    waveform = seeded((1, 2, 512), seed=5)
    loaded = load_mel_encoder(state, TINY)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(waveform), tiny(waveform))
    del state[CHECKPOINT_PREFIX + "mel.to_mel_scale.fb"]  # deterministic: computed when absent
    with torch.no_grad():
        torch.testing.assert_close(load_mel_encoder(state, TINY)(waveform), tiny(waveform))


def test_load_refuses_missing_and_misshapen_keys(tiny):
    state = {CHECKPOINT_PREFIX + key: tensor for key, tensor in tiny.state_dict().items()}
    missing = {key: value for key, value in state.items() if not key.endswith("to_out.bias")}
    with pytest.raises(WeightsError, match="missing to_in.block.to_out.bias"):
        load_mel_encoder(missing, TINY)
    misshapen = {**state, CHECKPOINT_PREFIX + "to_out.weight": torch.zeros(4, 16, 1)}
    with pytest.raises(WeightsError, match=r"to_out.weight \(4, 16, 1\) != \(4, 32, 1\)"):
        load_mel_encoder(misshapen, TINY)


# ---------------------------------------------------------------------------------------------------------------
# whole DMAE: layout


def test_full_size_dmae_state_dict_is_the_published_layout():
    with torch.device("meta"):
        model = DMAE()
    state = dmae_state_dict(model)
    assert list(state) == list(PUBLISHED["keys"])  # names and upstream's order, all 937
    assert {key: list(tensor.shape) for key, tensor in state.items()} == PUBLISHED["keys"]
    unique = {id(tensor): tensor.numel() for tensor in state.values()}
    assert sum(unique.values()) == PUBLISHED["config"]["unique_tensor_elements"] == 86_312_752
    decoder_keys = [key.removeprefix("model.net.") for key in state if key.startswith("model.net.")]
    assert len(decoder_keys) == 275
    for key in decoder_keys:  # one tensor behind the three aliases
        assert all(state[f"model.{alias}{key}"] is state[f"model.net.{key}"] for alias in UPSTREAM_ALIASES)
    time_mlp = "model.net.blocks.2.blocks.1.blocks.{}.0.weight"
    assert state[time_mlp.format(0)] is state[time_mlp.format(1)]


def test_published_config_and_latent_rate():
    config = DMAEConfig()
    published = PUBLISHED["config"]["decoder"]
    assert config.samples_per_latent == config.decoder_factor == SAMPLES_PER_LATENT == PUBLISHED["config"]["downsample_factor"]
    assert config.latent_channels == LATENT_CHANNELS == 32
    assert config.inject_depth == published["inject_depth"] == 4
    assert (list(config.unet.channels), list(config.unet.factors), list(config.unet.items)) == (
        published["channels"], published["factors"], published["items"])
    assert list(config.unet.context_channels) == published["context_channels"]
    assert config.unet.in_channels == config.audio_channels * config.num_filters == 256
    assert DMAEConfig.from_architecture(json.loads(json.dumps(config.to_architecture()))) == config
    with pytest.raises(ValueError, match="latent rate"):
        DMAEConfig(stride=16)
    with pytest.raises(ValueError, match="map the transform's"):
        DMAEConfig(num_filters=64)


# ---------------------------------------------------------------------------------------------------------------
# whole DMAE: tiny folders


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    weights_dir = tmp_path_factory.mktemp("weights")
    build_autoencoder(weights_dir)
    return weights_dir / AUTOENCODER_FOLDER


@pytest.fixture(scope="module")
def tiny_dmae(tiny_weights) -> DMAE:
    return load_dmae(tiny_weights, "cpu", torch.float32)


def saved_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / WEIGHTS_FILE, weights_only=True)


def write_folder(folder: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    torch.save(state, folder / WEIGHTS_FILE)
    return folder


def test_tiny_builder_writes_the_published_layout_deterministically(tiny_weights, tmp_path):
    config = json.loads((tiny_weights / CONFIG_FILE).read_text())
    assert {key: config[key] for key in AUTOENCODER_CONFIG} == PUBLISHED["config"]["config_json"]
    architecture = DMAEConfig.from_architecture(config["avtool_architecture"])
    assert architecture.samples_per_latent == SAMPLES_PER_LATENT and architecture.latent_channels == LATENT_CHANNELS
    assert architecture.stride == 32 and architecture.encoder.hop_length == 256 and architecture.inject_depth == 4
    state = saved_state(tiny_weights)
    published_names = {key.split(".", 2)[1] for key in PUBLISHED["keys"]}
    assert {key.split(".", 2)[1] for key in state} == published_names == {"net", "diffusion", "sampler", "encoder"}
    assert state["model.sampler.net.blocks.0.weight"].data_ptr() == state["model.net.blocks.0.weight"].data_ptr()
    assert os.path.getsize(tiny_weights / WEIGHTS_FILE) < 400_000
    build_autoencoder(tmp_path)
    again = saved_state(tmp_path / AUTOENCODER_FOLDER)
    assert list(again) == list(state) and all(torch.equal(again[key], state[key]) for key in state)


@pytest.mark.parametrize("prefixes", [("model.",), ("model.net.", "model.encoder.")], ids=["three-aliases", "net-only"])
def test_tiny_folder_loads_back_exactly(tiny_weights, tmp_path, prefixes):
    saved = saved_state(tiny_weights)
    config = json.loads((tiny_weights / CONFIG_FILE).read_text())
    folder = write_folder(tmp_path / "dmae", {k: v for k, v in saved.items() if k.startswith(prefixes)}, config)
    model = load_dmae(folder, "cpu", torch.float32)
    assert not model.training
    loaded = dmae_state_dict(model)
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


def test_encoder_buffers_may_be_absent(tiny_weights, tiny_dmae, tmp_path):
    saved = saved_state(tiny_weights)
    config = json.loads((tiny_weights / CONFIG_FILE).read_text())
    kept = {key: value for key, value in saved.items() if not key.startswith(CHECKPOINT_PREFIX + "mel.")}
    model = load_dmae(write_folder(tmp_path / "dmae", kept, config), "cpu", torch.float32)
    audio = seeded((1, 2, 1024), seed=3)
    torch.testing.assert_close(model.encode(audio), tiny_dmae.encode(audio), atol=0, rtol=0)


def test_without_architecture_the_published_sizes_are_expected(tiny_weights, tmp_path):
    folder = write_folder(tmp_path / "dmae", saved_state(tiny_weights), PUBLISHED["config"]["config_json"])
    with pytest.raises(WeightsError, match=r"wrong shapes: model.net.blocks.0.weight \(8, 2, 64\) != \(256, 2, 64\)") as caught:
        load_dmae(folder, "cpu", torch.float32)
    assert caught.value.exit_code == EXIT_WEIGHTS and "download-weights d2m" in caught.value.hint


def _drop_everywhere(key: str):
    def change(state: dict) -> None:
        for alias in UPSTREAM_ALIASES:
            state.pop(f"model.{alias}{key}")
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_drop_everywhere("blocks.1.weight"), "missing keys: model.net.blocks.1.weight"),
    (lambda s: s.pop("model.encoder.to_out.bias"), "missing keys: model.encoder.to_out.bias"),
    (lambda s: s.update({"model.encoder.to_out.weight": torch.zeros(32, 8, 1)}),
     r"wrong shapes: model.encoder.to_out.weight \(32, 8, 1\) != \(32, 16, 1\)"),
    (lambda s: s.update({"model.extra": torch.zeros(1)}), "unexpected keys: model.extra"),
    (lambda s: s.pop("model.sampler.net.blocks.0.weight"), r"model\.sampler\.net\.\* does not mirror model\.net\.\*"),
    (lambda s: s.update({"model.net.blocks.2.blocks.1.blocks.1.0.bias": torch.zeros(16)}), "repeated Linear"),
], ids=["missing-decoder", "missing-encoder", "wrong-shape", "unexpected", "alias-mismatch", "time-mlp-copies-differ"])
def test_bad_checkpoints_are_refused(tiny_weights, tmp_path, change, message):
    state = saved_state(tiny_weights)
    change(state)
    folder = write_folder(tmp_path / "dmae", state, json.loads((tiny_weights / CONFIG_FILE).read_text()))
    with pytest.raises(WeightsError, match=message) as caught:
        load_dmae(folder, "cpu", torch.float32)
    assert caught.value.exit_code == EXIT_WEIGHTS and "download-weights d2m" in caught.value.hint


class CodePayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_code_payload_is_refused(tiny_weights, tmp_path):
    marker = tmp_path / "payload-ran"
    state = {**saved_state(tiny_weights), "payload": CodePayload(marker)}
    folder = write_folder(tmp_path / "dmae", state, json.loads((tiny_weights / CONFIG_FILE).read_text()))
    with pytest.raises(WeightsError, match="needs arbitrary pickled code"):
        load_dmae(folder, "cpu", torch.float32)
    assert not marker.exists()


def test_missing_or_broken_config_is_refused(tiny_weights, tmp_path):
    folder = write_folder(tmp_path / "dmae", {}, {})
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(WeightsError, match="config.json: missing"):
        load_dmae(folder, "cpu", torch.float32)
    (folder / CONFIG_FILE).write_text(json.dumps({"avtool_architecture": {"stride": 16}}))
    with pytest.raises(WeightsError, match="bad avtool_architecture"):
        load_dmae(folder, "cpu", torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# whole DMAE: encode, decoder forward, decode


def test_tiny_encode_shape_and_range(tiny_dmae):
    latent = tiny_dmae.encode(seeded((2, 2, 3 * SAMPLES_PER_LATENT), seed=4, scale=2.0))
    assert latent.shape == (2, LATENT_CHANNELS, 3)
    assert latent.abs().max() <= 1.0


def test_decoder_forward_matches_framewise_learned_transform(tiny_dmae):
    """Analysis: reflect-pad by 16, cut 64-sample frames every 32 samples, one dot product per filter. Synthesis:
    each band frame times the filters, overlap-added every 32 samples, 16 samples cropped at both ends."""
    model = tiny_dmae
    state = {key: tensor.detach() for key, tensor in dmae_state_dict(model).items()}
    x = seeded((2, 2, 1024), seed=6, scale=1.0)
    latent = seeded((2, LATENT_CHANNELS, 2), seed=7, scale=0.5)
    sigma = torch.tensor([0.3, 0.9])
    frames = F.pad(x, (16, 16), mode="reflect").unfold(-1, 64, 32)  # (B, 2, 32, 64)
    bands = torch.einsum("bclk,fck->bfl", frames, state["model.net.blocks.0.weight"])
    with torch.no_grad():
        features = model.time(sigma)
        inner = model.unet(bands, features, None, [None] * 4 + [latent])
        ours = model.decoder_v(x, sigma, latent)
    pieces = torch.einsum("bfl,fok->bolk", inner, state["model.net.blocks.1.weight"])
    full = torch.zeros(2, 2, 31 * 32 + 64)
    for frame in range(32):
        full[..., frame * 32:frame * 32 + 64] += pieces[:, :, frame]
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, full[..., 16:16 + 1024], atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # one σ for the whole batch
        torch.testing.assert_close(model.decoder_v(x, 0.5, latent), model.decoder_v(x, torch.tensor([0.5, 0.5]), latent))


def test_decode_shape_and_seed_reproducibility(tiny_dmae):
    latent = tiny_dmae.encode(seeded((2, 2, 2 * SAMPLES_PER_LATENT), seed=8))
    steps: list[int] = []
    audio = tiny_dmae.decode(latent, 3, torch.Generator().manual_seed(5), callback=lambda info: steps.append(info["i"]))
    assert audio.shape == (2, 2, 2 * SAMPLES_PER_LATENT) and audio.dtype == torch.float32
    assert steps == [0, 1, 2] and torch.isfinite(audio).all()
    assert torch.equal(tiny_dmae.decode(latent, 3, torch.Generator().manual_seed(5)), audio)
    assert not torch.equal(tiny_dmae.decode(latent, 3, torch.Generator().manual_seed(6)), audio)


def test_one_step_decode_is_the_x0_estimate_from_unit_noise(tiny_dmae):
    """σ 1 → 0 in one step: x = cos(π/2)·noise − sin(π/2)·v(noise, 1) = −v, noise drawn in float32 from the generator."""
    latent = seeded((1, LATENT_CHANNELS, 2), seed=9, scale=0.5)
    audio = tiny_dmae.decode(latent, 1, torch.Generator().manual_seed(11))
    noise = torch.randn(1, 2, 1024, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = -tiny_dmae.decoder_v(noise, torch.tensor([1.0]), latent)
    torch.testing.assert_close(audio, expected, atol=1e-6, rtol=1e-5)


def test_bfloat16_load_keeps_the_front_end_in_float32(tiny_weights):
    model = load_dmae(tiny_weights, "cpu", torch.bfloat16)
    assert model.transform.analysis.weight.dtype == model.unet.levels[0].downsample.weight.dtype == torch.bfloat16
    assert model.encoder.mel.to_spectrogram.window.dtype == model.encoder.mel.to_mel_scale.fb.dtype == torch.float32
    latent = model.encode(seeded((1, 2, 1024), seed=12))
    audio = model.decode(latent, 2, torch.Generator().manual_seed(1))
    assert latent.dtype == audio.dtype == torch.bfloat16 and audio.shape == (1, 2, 1024)
