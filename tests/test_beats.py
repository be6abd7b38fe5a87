"""BEATs: the Kaldi fbank against a frame-by-frame numpy computation from Kaldi's definition, the forward pass against
upstream's formulas written out on the raw checkpoint tensors, the tiny checkpoint's loading and refusals, and the
full-size layout (on the meta device) against the published checkpoint's key list."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avtool.errors import WeightsError
from avtool.models.beats import BEATs, BEATsConfig, beats_input, checked_state_dict, kaldi_fbank, load_beats, num_tokens
from avtool.models.beats.model import SHARED_TABLE, relative_position_buckets
from avtool.weights.loading import load_checkpoint
from avtool.weights.tiny.beats import CFG, write_tiny_beats

KEYS = json.loads((Path(__file__).parent / "data" / "beats_keys.json").read_text())
RATE = 16000


def tone(seconds: float = 2.0, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(RATE * seconds), dtype=torch.float64) / RATE
    return (0.5 * torch.sin(2 * math.pi * hz * t)).float()


def noise(seconds: float = 2.0) -> torch.Tensor:
    return 0.1 * torch.randn(int(RATE * seconds), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    return write_tiny_beats(tmp_path_factory.mktemp("beats"))


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path) -> dict:
    return load_checkpoint(checkpoint_path)


@pytest.fixture(scope="module")
def model(checkpoint) -> BEATs:
    return load_beats(checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# Kaldi fbank


def kaldi_mel(frequency: float) -> float:
    return 1127.0 * math.log(1.0 + frequency / 700.0)


def reference_fbank(signal: np.ndarray, bins: int = 128) -> np.ndarray:
    """Kaldi's compute-fbank-feats with BEATs' options, one frame at a time in float64."""
    length, shift, fft_size = 400, 160, 512  # 25 ms, 10 ms at 16 kHz; FFT rounded up to a power of two
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1))) ** 0.85 for n in range(length)])
    low, high = kaldi_mel(20.0), kaldi_mel(RATE / 2)
    step = (high - low) / (bins + 1)
    banks = np.zeros((bins, fft_size // 2 + 1))
    for b in range(bins):
        left, centre, right = low + b * step, low + (b + 1) * step, low + (b + 2) * step
        for i in range(fft_size // 2):  # Kaldi's MelBanks cover bins 0 .. N/2 - 1: the Nyquist bin gets nothing
            mel = kaldi_mel(i * RATE / fft_size)
            if left < mel < right:
                banks[b, i] = (mel - left) / (centre - left) if mel <= centre else (right - mel) / (right - centre)
    rows = []
    for start in range(0, len(signal) - length + 1, shift):
        frame = signal[start:start + length].astype(np.float64)
        frame = frame - frame.mean()
        emphasised = np.empty_like(frame)
        emphasised[0] = frame[0] - 0.97 * frame[0]  # Kaldi: the first sample is pre-emphasised against itself
        for n in range(1, length):
            emphasised[n] = frame[n] - 0.97 * frame[n - 1]
        spectrum = np.fft.rfft(emphasised * window, n=fft_size)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        rows.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return np.array(rows)


@pytest.mark.parametrize("signal", [tone, noise], ids=["tone-440Hz", "white-noise"])
def test_fbank_matches_kaldi_definition(signal):
    scaled = signal() * 2**15  # the int16 scale BEATs feeds
    expected = reference_fbank(scaled.double().numpy())
    exact = kaldi_fbank(scaled.double())
    assert exact.shape == (198, 128)
    np.testing.assert_allclose(exact.numpy(), expected, rtol=0, atol=1e-4)

    # In float32, as torchaudio computes it for BEATs, rounding leaves a floor: bands more than 14 nepers (61 dB) below
    # their frame's strongest band (most of a pure tone's spectrum, the lowest pre-emphasised bands of noise) are
    # float32 rounding noise, in torchaudio too (up to 0.15 off here). Above it the float32 values keep the 1e-4.
    single = kaldi_fbank(scaled)
    audible = expected.max(axis=1, keepdims=True) - expected < 14
    assert single.dtype == torch.float32 and audible.sum(axis=1).min() >= 16
    np.testing.assert_allclose(single.double().numpy()[audible], expected[audible], rtol=0, atol=1e-4)


def test_beats_input_normalises_a_batch_item_by_item():
    batch = torch.stack([tone(), noise()])
    features = beats_input(batch)
    assert features.shape == (2, 198, 128)
    for item, waveform in enumerate(batch):
        torch.testing.assert_close(features[item], (kaldi_fbank(waveform * 2**15) - 15.41663) / (2 * 6.55582))


def test_fbank_of_audio_shorter_than_a_frame_is_empty():
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 128)
    assert [num_tokens(n) for n in (399, 16000, 32000, 32000 + 159, 32000 + 160)] == [0, 48, 96, 96, 96]


# ---------------------------------------------------------------------------------------------------------------
# Forward pass against upstream's formulas


def reference_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    half = num_buckets // 2
    exact = half // 2
    distance = abs(offset)
    bucket = half if offset > 0 else 0
    if distance < exact:
        return bucket + distance
    return bucket + min(half - 1, exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)))


def test_relative_position_buckets_full_size():
    cfg = KEYS["cfg_values_used"]
    buckets = relative_position_buckets(1000, cfg["num_buckets"], cfg["max_distance"])
    expected = [[reference_bucket(key - query, cfg["num_buckets"], cfg["max_distance"]) for key in range(0, 1000, 7)]
                for query in range(0, 1000, 7)]
    assert buckets[::7, ::7].tolist() == expected


def reference_layers(state: dict, cfg: dict, fbank: torch.Tensor) -> list[torch.Tensor]:
    """Upstream's forward on the raw checkpoint tensors, in its fairseq layout (time, batch, channels), with its q
    scaling by 1/32 and max subtraction, the bias computed once from layer 0's table."""
    def linear(x, prefix):
        return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    def norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    x = F.conv2d(fbank.unsqueeze(1), state["patch_embedding.weight"], stride=cfg["input_patch_size"])
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)
    x = linear(norm(x, "layer_norm"), "post_extract_proj")
    weight = torch._weight_norm(state["encoder.pos_conv.0.weight_v"], state["encoder.pos_conv.0.weight_g"], 2)
    conv = F.conv1d(x.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"], padding=cfg["conv_pos"] // 2,
                    groups=cfg["conv_pos_groups"])[:, :, :-1]  # SamePad of an even kernel
    x = norm(x + F.gelu(conv).transpose(1, 2), "encoder.layer_norm").transpose(0, 1)
    length, batch, dim = x.shape
    heads = cfg["encoder_attention_heads"]
    head_dim = dim // heads
    scaling = head_dim ** -0.5
    buckets = torch.tensor([[reference_bucket(k - q, cfg["num_buckets"], cfg["max_distance"]) for k in range(length)]
                            for q in range(length)])
    bias = state[SHARED_TABLE.format(0)][buckets].permute(2, 0, 1).repeat(batch, 1, 1)
    alpha = (2 * cfg["encoder_layers"]) ** 0.25
    outputs = []
    for index in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{index}"
        q = linear(x, f"{p}.self_attn.q_proj") * scaling / 32
        k, v = linear(x, f"{p}.self_attn.k_proj"), linear(x, f"{p}.self_attn.v_proj")
        q, k, v = (t.reshape(length, batch * heads, head_dim).transpose(0, 1) for t in (q, k, v))
        logits = torch.bmm(q, k.transpose(1, 2))
        logits = (logits - logits.max(dim=-1, keepdim=True)[0]) * 32
        query = q.view(batch, heads, length, head_dim) * 32 / scaling
        gate = torch.sigmoid(linear(query, f"{p}.self_attn.grep_linear").view(batch, heads, length, 2, 4).sum(-1))
        gate_a, gate_b = gate.chunk(2, dim=-1)
        scale = gate_a * (gate_b * state[f"{p}.self_attn.grep_a"] - 1.0) + 2.0
        logits = logits + scale.view(batch * heads, length, 1) * bias
        attended = torch.bmm(F.softmax(logits, dim=-1), v).transpose(0, 1).reshape(length, batch, dim)
        x = norm(x * alpha + linear(attended, f"{p}.self_attn.out_proj"), f"{p}.self_attn_layer_norm")
        x = norm(x * alpha + linear(F.gelu(linear(x, f"{p}.fc1")), f"{p}.fc2"), f"{p}.final_layer_norm")
        outputs.append(x.transpose(0, 1))
    return outputs


def test_forward_matches_upstream_formulas(model, checkpoint):
    fbank = beats_input(torch.stack([tone(), noise()]))
    with torch.no_grad():
        ours = model(fbank)
        expected = reference_layers(checkpoint["model"], checkpoint["cfg"], fbank)
        features = model.extract_layer_features(torch.stack([tone(), noise()]))
    assert len(ours) == CFG["encoder_layers"]
    for layer, reference in zip(ours, expected, strict=True):
        torch.testing.assert_close(layer, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The tiny checkpoint


def test_tiny_checkpoint_layer_features(model, checkpoint_path):
    assert checkpoint_path.name == "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
    assert checkpoint_path.stat().st_size < 300_000
    with torch.no_grad():
        features = model.extract_layer_features(noise()[None])
        again = model.extract_layer_features(noise()[None])
    assert features.shape == (1, 96, CFG["encoder_layers"] * CFG["encoder_embed_dim"]) == (1, num_tokens(32000), 64)
    assert torch.equal(features, again) and features.isfinite().all()


def test_tiny_checkpoint_is_deterministic(checkpoint, tmp_path):
    other = load_checkpoint(write_tiny_beats(tmp_path))
    assert other["cfg"] == checkpoint["cfg"] and other["label_dict"] == checkpoint["label_dict"]
    assert other["model"].keys() == checkpoint["model"].keys()
    assert all(torch.equal(other["model"][key], tensor) for key, tensor in checkpoint["model"].items())


def test_tokens_are_time_major(model):
    """Token t * 8 + f is time patch t, frequency patch f: changing the first 16 frames changes tokens 0..7 as they
    leave the patch embedding (before the positional conv mixes time)."""
    fbank = beats_input(noise()[None])
    changed = fbank.clone()
    changed[:, :16] = 0
    tokens = []
    hook = model.layer_norm.register_forward_hook(lambda module, inputs, output: tokens.append(output))
    with torch.no_grad():
        model(fbank)
        model(changed)
    hook.remove()
    assert (tokens[0] != tokens[1]).any(-1)[0].nonzero().flatten().tolist() == list(range(8))


def test_renamed_key_is_refused(checkpoint):
    state = dict(checkpoint["model"])
    state["encoder.layers.1.fc_1.weight"] = state.pop("encoder.layers.1.fc1.weight")
    renamed = r"unexpected keys: encoder\.layers\.1\.fc_1\.weight.*missing keys: encoder\.layers\.1\.fc1\.weight"
    with pytest.raises(WeightsError, match=renamed):
        load_beats({**checkpoint, "model": state}, name="beats.pt")


def test_wrong_shape_is_refused(checkpoint):
    state = {**checkpoint["model"], "predictor.bias": torch.zeros(7)}
    with pytest.raises(WeightsError, match=r"beats\.pt: .*wrong shapes: predictor\.bias \(7,\) != \(5,\)"):
        load_beats({**checkpoint, "model": state}, name="beats.pt")


@pytest.mark.parametrize("broken, message", [
    (lambda c: {"model": c["model"]}, "needs 'cfg' and 'model'"),
    (lambda c: [c], "not a BEATs checkpoint"),
    (lambda c: {**c, "model": {**c["model"], "note": "text"}}, "not a flat state dict"),
    (lambda c: {**c, "cfg": {k: v for k, v in c["cfg"].items() if k != "conv_pos"}}, "lacks conv_pos"),
    (lambda c: {**c, "cfg": {**c["cfg"], "layer_norm_first": True}}, "layer_norm_first=True is not supported"),
    (lambda c: {**c, "cfg": {**c["cfg"], "encoder_layers": "2"}}, "encoder_layers='2' is not a positive int"),
], ids=["no-cfg", "not-a-dict", "non-tensor", "missing-shape-key", "pre-ln", "string-size"])
def test_broken_checkpoints_are_refused(checkpoint, broken, message):
    with pytest.raises(WeightsError, match=message) as error:
        load_beats(broken(checkpoint), name="beats.pt")
    assert error.value.message.startswith("beats.pt: ") and "\n" not in error.value.message


# ---------------------------------------------------------------------------------------------------------------
# The shared relative-position table


def test_all_layers_read_one_table(model):
    tables = {id(layer.self_attn.relative_attention_bias) for layer in model.encoder.layers}
    assert len(tables) == 1
    fbank = beats_input(noise()[None])
    with torch.no_grad():
        before = model(fbank)[0]
        last = model.encoder.layers[-1].self_attn.relative_attention_bias.weight
        saved = last.clone()
        last.mul_(3.0)  # edited through the last layer's name: layer 0's output moves
        after = model(fbank)[0]
        last.copy_(saved)
    assert not torch.allclose(before, after)


def test_table_aliases_may_be_absent_but_not_different(model, checkpoint):
    alias = SHARED_TABLE.format(1)
    without = {key: tensor for key, tensor in checkpoint["model"].items() if key != alias}
    assert checked_state_dict(without, model)[alias] is checkpoint["model"][SHARED_TABLE.format(0)]
    different = {**checkpoint["model"], alias: checkpoint["model"][alias] + 1.0}
    with pytest.raises(WeightsError, match=r"encoder\.layers\.1\.self_attn\.relative_attention_bias\.weight differs"):
        checked_state_dict(different, model)


# ---------------------------------------------------------------------------------------------------------------
# Full size, without weights


def test_full_size_layout_matches_published_keys():
    cfg = KEYS["cfg_values_used"]
    with torch.device("meta"):
        model = BEATs(BEATsConfig.from_cfg(cfg))
    assert {key: list(tensor.shape) for key, tensor in model.state_dict().items()} == KEYS["keys"]
    assert sum(parameter.numel() for parameter in model.parameters()) == KEYS["num_params_unique"]
    assert len({id(layer.self_attn.relative_attention_bias) for layer in model.encoder.layers}) == 1

    published = {key: torch.empty(shape, device="meta") for key, shape in KEYS["keys"].items()}
    loaded = load_beats({"cfg": cfg, "model": published, "label_dict": {}})
    assert {key: list(tensor.shape) for key, tensor in loaded.state_dict().items()} == KEYS["keys"]
