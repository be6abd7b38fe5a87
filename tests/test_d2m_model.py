"""D2M model layer: MOT and the diffusion U-Net at full size on the meta device against upstream's key lists, and
tiny random models against an independent forward written the way a-unet nests its blocks, reading upstream's
state-dict names (so a name mapped to the wrong module of the same shape shows as a wrong output)."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avtool.errors import EXIT_WEIGHTS, WeightsError
from avtool.models.d2m.diffusion import (
    UPSTREAM_ALIASES,
    D2MConfig,
    D2MDenoiser,
    NumberEmbedder,
    load_upstream_state_dict,
    upstream_state_dict,
)
from avtool.models.d2m.mot import MOT, MOTConfig
from avtool.models.d2m.unet import UNet1d, UNetConfig, parameter_names, upstream_module_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_UNET = UNetConfig(in_channels=4, channels=(8, 16, 16), factors=(1, 2, 2), items=(2, 1, 1), attentions=(0, 1, 1),
                       cross_attentions=(1, 0, 1), attention_heads=2, attention_features=4, embedding_features=6,
                       resnet_groups=4, modulation_features=12)
TINY_D2M = D2MConfig(unet=TINY_UNET, embedding_max_length=7)
TINY_MOT = MOTConfig(dim=6, depth=2, heads=2, dim_head=4, mlp_dim=10, num_classes=3, num_frames=6)
TIME_MLP = ("blocks.1.blocks.0.0", "blocks.1.blocks.1.0")
NULL_TABLE = "net.blocks.2.blocks.0.blocks.0.blocks.0.weight"
UNET_ROOT = "net.blocks.2.blocks.0.blocks.1.net."


def reference_keys(name: str) -> dict:
    """tests/data/d2m_<name>_keys.json, else the shared reference it is copied from."""
    for path in (Path(__file__).parent / "data" / f"d2m_{name}_keys.json", Path("/work/shared/reference/keys") / f"d2m_{name}.json"):
        if path.exists():
            return json.loads(path.read_text())
    pytest.skip(f"no key list for d2m_{name}")


def seeded(factory, seed: int):
    torch.manual_seed(seed)
    return factory().eval()


def tiny_denoiser(seed: int = 0) -> D2MDenoiser:
    return seeded(lambda: D2MDenoiser(TINY_D2M), seed)


def tiny_inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    tokens = torch.randn(batch, 7, 6, generator=generator)
    return x, sigma, tokens


# ---------------------------------------------------------------------------------------------------------------
# Independent forward over upstream names (a-unet's nesting, explicit softmax attention)


def reference_attention(sd: dict, prefix: str, x: torch.Tensor, context: torch.Tensor | None, heads: int) -> torch.Tensor:
    def weight(name):
        return sd[prefix + "blocks.0.block." + name]

    frames = x.transpose(1, 2)
    context = frames if context is None else context
    q = F.layer_norm(frames, frames.shape[-1:], weight("norm.weight"), weight("norm.bias")) @ weight("to_q.weight").T
    kv = F.layer_norm(context, context.shape[-1:], weight("norm_context.weight"), weight("norm_context.bias")) @ weight("to_kv.weight").T
    k, v = kv.chunk(2, dim=-1)
    q, k, v = (t.reshape(*t.shape[:2], heads, -1) for t in (q, k, v))
    attention = (torch.einsum("bnhd,bmhd->bhnm", q, k) * q.shape[-1] ** -0.5).softmax(dim=-1)
    out = torch.einsum("bhnm,bmhd->bnhd", attention, v).flatten(2) @ weight("attention.blocks.0.weight").T
    return x + out.transpose(1, 2)


def reference_block(sd: dict, config: UNetConfig, depth: int, prefix: str, x, features, embedding, channels):
    def weight(name):
        return sd[prefix + name]

    factor = config.factors[depth]
    skip = F.conv1d(x, weight("skip_adapter.block.weight"), weight("skip_adapter.block.bias")) if prefix + "skip_adapter.block.weight" in sd else x
    x = F.conv1d(x, weight("block.blocks.0.block.weight"), weight("block.blocks.0.block.bias"), stride=factor)
    kinds = (["resnet"] + ["modulation"] * config.use_modulation + ["inject"] * (config.context_channels[depth] > 0)
             + ["attention"] * config.attentions[depth] + ["cross"] * config.cross_attentions[depth]) * config.items[depth]
    sequence = kinds + ["inner"] * (depth + 1 < len(config.channels)) + kinds
    for index, kind in enumerate(sequence, start=1):
        item = f"block.blocks.{index}."
        if kind == "inner":
            x = reference_block(sd, config, depth + 1, prefix + item, x, features, embedding, channels)
        elif kind == "resnet":
            h = x
            for conv in ("0", "1"):
                part = f"{item}block.blocks.0.blocks.{conv}."
                h = F.group_norm(h, config.resnet_groups, weight(part + "0.weight"), weight(part + "0.bias"))
                h = F.conv1d(F.silu(h), weight(part + "2.weight"), weight(part + "2.bias"), padding=1)
            x = h + x
        elif kind == "modulation":
            scale_shift = F.linear(F.silu(features), weight(item + "blocks.0.block.blocks.0.1.weight"), weight(item + "blocks.0.block.blocks.0.1.bias"))
            scale, shift = scale_shift[:, None].chunk(2, dim=-1)
            frames = x.transpose(1, 2)
            x = (F.layer_norm(frames, frames.shape[-1:], eps=1e-6) * (1 + scale) + shift).transpose(1, 2)
        elif kind == "inject":
            x = F.conv1d(torch.cat([x, channels[depth]], dim=1), weight(item + "block.blocks.0.weight"), weight(item + "block.blocks.0.bias")) + x
        else:
            x = reference_attention(sd, prefix + item, x, embedding if kind == "cross" else None, config.attention_heads)
    upsample = f"block.blocks.{len(sequence) + 1}.block.1."
    x = F.conv1d(x.repeat_interleave(factor, dim=-1), weight(upsample + "weight"), weight(upsample + "bias"), padding=1)
    if config.use_modulation:
        return skip + F.linear(F.silu(features), weight("skip.blocks.0.1.weight"), weight("skip.blocks.0.1.bias"))[..., None] * x
    return F.conv1d(torch.cat([skip * 2**-0.5, x], dim=1), weight("skip.blocks.0.weight"), weight("skip.blocks.0.bias"))


def reference_time(sd: dict, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma[:, None]
    freqs = sigma * sd["net.blocks.0.weights"][None] * 2 * math.pi
    features = F.linear(torch.cat([sigma, freqs.sin(), freqs.cos()], dim=-1), sd["net.blocks.0.to_out.weight"], sd["net.blocks.0.to_out.bias"])
    features = F.gelu(features)
    for linear in TIME_MLP:
        features = F.gelu(F.linear(features, sd[f"net.{linear}.weight"], sd[f"net.{linear}.bias"]))
    return features


def reference_denoise(sd: dict, x, sigma, tokens, scale: float = 1.0) -> torch.Tensor:
    features = reference_time(sd, sigma)
    cond = reference_block(sd, TINY_UNET, 0, UNET_ROOT, x, features, tokens, None)
    if scale == 1.0:
        return cond
    null = sd[NULL_TABLE][: tokens.shape[1]].expand_as(tokens)
    uncond = reference_block(sd, TINY_UNET, 0, UNET_ROOT, x, features, null, None)
    return uncond + (cond - uncond) * scale


def reference_mot(sd: dict, config: MOTConfig, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def layer_norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"])

    x = torch.cat([sd["cls_token"].expand(len(motion), -1, -1), motion], dim=1) + sd["pos_embedding"][:, : motion.shape[1] + 1]
    for layer in range(config.depth):
        attention, feed_forward = f"transformer.layers.{layer}.0.", f"transformer.layers.{layer}.1.net."
        q, k, v = (layer_norm(x, attention + "norm") @ sd[attention + "to_qkv.weight"].T).chunk(3, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], config.heads, -1) for t in (q, k, v))
        weights = (torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(config.dim_head)).softmax(dim=-1)
        out = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(2)
        x = x + F.linear(out, sd[attention + "to_out.0.weight"], sd[attention + "to_out.0.bias"])
        h = F.gelu(F.linear(layer_norm(x, feed_forward + "0"), sd[feed_forward + "1.weight"], sd[feed_forward + "1.bias"]))
        x = x + F.linear(h, sd[feed_forward + "4.weight"], sd[feed_forward + "4.bias"])
    x = layer_norm(x, "transformer.norm")
    return x, F.linear(x.mean(dim=1), sd["mlp_head.weight"], sd["mlp_head.bias"])


# ---------------------------------------------------------------------------------------------------------------
# Full size, meta device


@pytest.fixture(scope="module")
def full_denoiser() -> D2MDenoiser:
    with torch.device("meta"):
        return D2MDenoiser()


def test_full_size_mot_has_upstream_keys_and_shapes():
    reference = reference_keys("mot")
    with torch.device("meta"):
        mot = MOT()
    state = mot.state_dict()
    assert {key: list(tensor.shape) for key, tensor in state.items()} == reference["keys"]
    assert sum(tensor.numel() for tensor in state.values()) == reference["num_params"] == 6_822_748
    assert list(state)[:4] == ["pos_embedding", "cls_token", "transformer.norm.weight", "transformer.norm.bias"]  # upstream's order


def test_full_size_upstream_state_dict_has_upstream_keys_and_shapes(full_denoiser):
    reference = reference_keys("unet")
    state = upstream_state_dict(full_denoiser)
    assert {key: list(tensor.shape) for key, tensor in state.items()} == reference["keys"]
    assert len(state) == reference["num_tensors"] == 2268
    assert sum(p.numel() for p in full_denoiser.parameters()) == reference["num_params_unique"] == 246_215_015
    assert sum(tensor.numel() for tensor in state.values()) == reference["num_params"]
    assert len(full_denoiser.state_dict()) == 754
    for key in reference["keys"]:  # one tensor behind the three aliases
        alias_free = key.split("net.", 1)[1]
        assert all(state[alias + alias_free] is state["net." + alias_free] for alias in UPSTREAM_ALIASES)
    for alias in UPSTREAM_ALIASES:
        assert state[f"{alias}{TIME_MLP[0]}.weight"] is state[f"{alias}{TIME_MLP[1]}.weight"]
    assert next(iter(state)) == "net.blocks.0.weights"  # NumberEmbedder registers its weights before to_out


@pytest.mark.parametrize("aliases", [UPSTREAM_ALIASES, ("net.",)], ids=["three-aliases", "net-only"])
def test_full_size_upstream_state_dict_loads_back(full_denoiser, aliases):
    state = {key: tensor for key, tensor in upstream_state_dict(full_denoiser).items() if key.startswith(aliases)}
    with torch.device("meta"):
        target = D2MDenoiser()
    load_upstream_state_dict(target, state, assign=True)
    shapes = {key: tensor.shape for key, tensor in upstream_state_dict(target).items()}
    assert shapes == {key: tensor.shape for key, tensor in upstream_state_dict(full_denoiser).items()}


# ---------------------------------------------------------------------------------------------------------------
# Tiny models: maths


def test_mot_matches_reference_and_pools_all_tokens():
    mot = seeded(lambda: MOT(TINY_MOT), 0)
    motion = torch.randn(2, 6, 6)
    tokens, logits = mot(motion)
    assert tokens.shape == (2, 7, 6) and logits.shape == (2, 3)
    expected_tokens, expected_logits = reference_mot(mot.state_dict(), TINY_MOT, motion)
    torch.testing.assert_close(tokens, expected_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    short_tokens, _ = mot(motion[:, :4])  # fewer frames use the head of the position table
    torch.testing.assert_close(short_tokens, reference_mot(mot.state_dict(), TINY_MOT, motion[:, :4])[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at most 6 frames"):
        mot(torch.randn(1, 7, 6))


def test_number_embedder_is_learned_fourier_features():
    torch.manual_seed(0)
    embedder = NumberEmbedder(features=5, dim=8)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    w = embedder.weights.detach().double()
    rows = [[s, *(math.sin(2 * math.pi * s * wi) for wi in w), *(math.cos(2 * math.pi * s * wi) for wi in w)] for s in sigma.tolist()]
    expected = torch.tensor(rows, dtype=torch.float64) @ embedder.to_out.weight.double().T + embedder.to_out.bias.double()
    torch.testing.assert_close(embedder(sigma).double(), expected, atol=1e-5, rtol=1e-5)


def test_denoiser_matches_reference_with_and_without_guidance():
    model = tiny_denoiser()
    x, sigma, tokens = tiny_inputs()
    sd = upstream_state_dict(model)
    with torch.no_grad():
        v = model(x, sigma, tokens)
        guided = model(x, sigma, tokens, embedding_scale=3.0)
        assert v.shape == x.shape
        torch.testing.assert_close(v, reference_denoise(sd, x, sigma, tokens), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(guided, reference_denoise(sd, x, sigma, tokens, scale=3.0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(x[:1], 0.3, tokens[:1]), model(x[:1], torch.tensor([0.3]), tokens[:1]), atol=0, rtol=0)


@pytest.mark.parametrize("config", [
    UNetConfig(in_channels=3, channels=(8, 8), factors=(2, 2), items=(1, 1), attentions=(1, 0), cross_attentions=(0, 0),
               context_channels=(0, 5), attention_heads=2, attention_features=4, embedding_features=None,
               resnet_groups=2, modulation_features=6, out_channels=2),
    UNetConfig(in_channels=3, channels=(8, 8), factors=(1, 2), items=(1, 2), attentions=(0, 1), cross_attentions=(1, 0),
               context_channels=(2, 0), attention_heads=2, attention_features=4, embedding_features=5,
               resnet_groups=2, use_modulation=False),
], ids=["inject-deep-modulated-out-channels", "inject-top-skipcat"])
def test_unet_options_match_reference(config):
    """The options a DiffusionAE decoder uses: channel injection at one depth, no cross-attention, SkipCat, out ≠ in."""
    unet = seeded(lambda: UNet1d(config), 0)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, generator=generator)
    features = torch.randn(2, config.modulation_features, generator=generator)
    embedding = torch.randn(2, 3, config.embedding_features or 1, generator=generator)
    injected_depth = next(d for d, width in enumerate(config.context_channels) if width)
    length = 8 // math.prod(config.factors[: injected_depth + 1])
    channels = [None] * injected_depth + [torch.randn(2, config.context_channels[injected_depth], length, generator=generator)]
    state = unet.state_dict()
    upstream = {theirs: state[ours] for ours, theirs in parameter_names(unet, upstream_module_names(config))}
    assert len(upstream) == len(state)
    with torch.no_grad():
        out = unet(x, features, embedding, channels)
        expected = reference_block(upstream, config, 0, "", x, features, embedding, channels)
    assert out.shape == (2, config.out_channels or 3, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="injected channels"):
        unet(x, features, embedding, None)
    with pytest.raises(ValueError, match="not a multiple"):
        unet(x[..., :7], features, embedding, channels)


def test_guidance_scale_one_is_the_conditional_output_and_scale_mixes_two_passes():
    model = tiny_denoiser()
    x, sigma, tokens = tiny_inputs()
    with torch.no_grad():
        cond = model(x, sigma, tokens)
        uncond = model(x, sigma, model.null_tokens(2, 7))
        torch.testing.assert_close(model(x, sigma, tokens, embedding_scale=1.0), cond, atol=0, rtol=0)
        torch.testing.assert_close(model(x, sigma, tokens, embedding_scale=9.0), uncond + (cond - uncond) * 9.0, atol=1e-5, rtol=1e-4)


def test_embedding_mask_swaps_whole_samples_for_the_null_tokens():
    model = tiny_denoiser()
    x, sigma, tokens = tiny_inputs(batch=8)
    null = model.null_tokens(8, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x, sigma, tokens, embedding_mask_proba=1.0), model(x, sigma, null), atol=0, rtol=0)
        masked = model.mask_tokens(tokens, 0.5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(masked, model.mask_tokens(tokens, 0.5, torch.Generator().manual_seed(3)), atol=0, rtol=0)
    is_null = [torch.equal(masked[i], null[i]) for i in range(8)]
    assert all(is_null[i] or torch.equal(masked[i], tokens[i]) for i in range(8))
    assert 0 < sum(is_null) < 8
    assert model.mask_tokens(tokens, 0.0) is tokens


# ---------------------------------------------------------------------------------------------------------------
# Tiny models: loading


@pytest.mark.parametrize("aliases", [UPSTREAM_ALIASES, ("net.",)], ids=["three-aliases", "net-only"])
def test_upstream_checkpoint_loads_into_a_fresh_model(aliases):
    source = tiny_denoiser(seed=0)
    buffer = io.BytesIO()
    torch.save({k: v for k, v in upstream_state_dict(source).items() if k.startswith(aliases)}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    target = tiny_denoiser(seed=1)
    load_upstream_state_dict(target, state)
    x, sigma, tokens = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(target(x, sigma, tokens, embedding_scale=2.0), source(x, sigma, tokens, embedding_scale=2.0), atol=0, rtol=0)


def test_saved_upstream_state_dict_shares_storage_across_aliases():
    buffer = io.BytesIO()
    state = upstream_state_dict(tiny_denoiser())
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    key = UNET_ROOT.removeprefix("net.") + "block.blocks.0.block.weight"
    assert loaded["net." + key].data_ptr() == loaded["sampler.net." + key].data_ptr() == loaded["diffusion.net." + key].data_ptr()
    assert loaded[f"net.{TIME_MLP[0]}.bias"].data_ptr() == loaded[f"net.{TIME_MLP[1]}.bias"].data_ptr()


def _broken(change) -> dict:
    state = dict(upstream_state_dict(tiny_denoiser()))
    change(state)
    return state


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("net.blocks.0.weights"), "missing keys: net.blocks.0.weights"),
    (lambda s: s.update({"net.blocks.9.weight": torch.zeros(1)}), "unexpected keys: net.blocks.9.weight"),
    (lambda s: s.update({"model.extra": torch.zeros(1)}), "unexpected keys: model.extra"),
    (lambda s: s.update({NULL_TABLE: torch.zeros(8, 6)}), "wrong shapes"),
    (lambda s: s.pop("sampler.net.blocks.0.weights"), r"sampler\.net\.\* does not mirror"),
    (lambda s: s.update({f"net.{TIME_MLP[1]}.weight": torch.zeros(12, 12)}), "repeated Linear"),
], ids=["missing", "unexpected-net", "unexpected-prefix", "wrong-shape", "alias-mismatch", "time-mlp-copies-differ"])
def test_bad_checkpoints_are_refused(change, message):
    with pytest.raises(WeightsError, match=message) as caught:
        load_upstream_state_dict(tiny_denoiser(), _broken(change))
    assert caught.value.exit_code == EXIT_WEIGHTS and "download-weights d2m" in caught.value.hint


def test_package_import_does_not_import_torch():
    code = "import sys, avtool.models.d2m; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
