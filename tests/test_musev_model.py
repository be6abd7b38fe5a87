"""MuseV model layer: full-size key layouts on the meta device against the sets derived from upstream's code
(tests/data/musev_*_keys.json), and behaviour of the tiny random checkpoints in the hub layout."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel

from avtool.errors import WeightsError
from avtool.models.musev.config import VARIANTS, MuseVConfig
from avtool.models.musev.denoiser import MuseVDenoiser
from avtool.models.musev.ip_adapter import ImageProjection
from avtool.models.musev.loading import image_projection_state, load_base_spatial_weights, load_weights
from avtool.models.musev.referencenet import ReferenceNet
from avtool.models.musev.unet import ControlResiduals, MuseVUNet, ReferenceFeatures, refer_emb_indices
from avtool.weights.tiny import musev as tiny

DATA = Path(__file__).parent / "data"
PUBLISHED_BYTES = {"unet musev": 5.68e9, "referencenet": 1.39e9, "image_proj": 12.6e6}  # fp32 files, A.1


def _keys(part: str, variant: str | None = None) -> dict[str, list[int]]:
    data = json.loads((DATA / f"musev_{part}_keys.json").read_text())
    if variant is None:
        return data["keys"]
    return data["variants"][data["aliases"].get(variant, variant)]


def _layout(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def _meta_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in keys.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------------
# Full size, meta device


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_unet_has_upstream_keys(variant):
    with torch.device("meta"):
        unet = MuseVUNet(MuseVConfig.for_variant(variant))
    expected = _keys("unet", variant)
    assert _layout(unet) == expected
    load_weights(unet, _meta_state(expected), "diffusion_pytorch_model.bin")


def test_full_size_referencenet_and_projection_have_upstream_keys():
    with torch.device("meta"):
        referencenet, projection = ReferenceNet(MuseVConfig()), ImageProjection()
    assert _layout(referencenet) == _keys("referencenet")
    assert _layout(projection) == _keys("image_proj")
    load_weights(referencenet, _meta_state(_keys("referencenet")), "referencenet")
    load_weights(projection, _meta_state(_keys("image_proj")), "ip_adapter_image_proj.bin")


@pytest.mark.parametrize(("part", "keys"), [("unet musev", lambda: _keys("unet", "musev")),
                                            ("referencenet", lambda: _keys("referencenet")),
                                            ("image_proj", lambda: _keys("image_proj"))])
def test_parameter_counts_match_published_file_sizes(part, keys):
    fp32_bytes = 4 * sum(torch.Size(shape).numel() for shape in keys().values())
    assert fp32_bytes == pytest.approx(PUBLISHED_BYTES[part], rel=5e-3)


def test_ref_emb_index_mapping_keeps_upstream_quirk():
    assert [list(refer_emb_indices(i, 2, 4)) for i in range(4)] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [7, 8]]


# ---------------------------------------------------------------------------------------------------------------
# Tiny checkpoints


@pytest.fixture(scope="module")
def musev_dir(tmp_path_factory) -> Path:
    return tiny.build(tmp_path_factory.mktemp("weights"))[0]


def _unet(musev_dir: Path, variant: str) -> MuseVUNet:
    folder = musev_dir / "motion" / variant / "unet"
    unet = MuseVUNet(MuseVConfig.for_variant(variant, json.loads((folder / "config.json").read_text())))
    load_weights(unet, torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True), variant)
    return unet.eval()


@pytest.fixture(scope="module")
def unets(musev_dir) -> dict[str, MuseVUNet]:
    return {variant: _unet(musev_dir, variant) for variant in ("musev", "musev_referencenet")}


def _inputs(frames: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, frames, 16, 16, generator=generator)
    text = torch.randn(1, 5, tiny.TEXT_WIDTH, generator=generator)
    return sample, text


def _run(unet: MuseVUNet, sample: torch.Tensor, text: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, 500, text, **kwargs)


def test_tiny_variants_load_strictly_and_a_renamed_key_is_named(musev_dir):
    unet = _unet(musev_dir, "musev_referencenet_pose")
    state = torch.load(musev_dir / "motion/musev_referencenet_pose/unet/diffusion_pytorch_model.bin", weights_only=True)
    state["down_blocks.0.temp_convs.0.temporal_scale"] = state.pop("down_blocks.0.temp_convs.0.temporal_weight")
    with pytest.raises(WeightsError) as error:
        load_weights(unet, state, "pose.bin")
    assert error.value.message == ("pose.bin: checkpoint does not fit MuseVUNet: "
                                   "unexpected keys: down_blocks.0.temp_convs.0.temporal_scale, "
                                   "missing keys: down_blocks.0.temp_convs.0.temporal_weight")


def test_base_spatial_weights_replace_spatial_layers_only(musev_dir, unets):
    unet = _unet(musev_dir, "musev")
    sd15 = torch.load(musev_dir / tiny.BASE_MODEL / "unet/diffusion_pytorch_model.bin", weights_only=True)
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    load_base_spatial_weights(unet, sd15, "sd15")
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in sd15.items())
    assert torch.equal(after["down_blocks.0.temp_convs.0.conv1.2.weight"], before["down_blocks.0.temp_convs.0.conv1.2.weight"])
    with pytest.raises(WeightsError, match="unexpected keys: extra.weight"):
        load_base_spatial_weights(unet, {**sd15, "extra.weight": torch.zeros(1)}, "sd15")


def _resnet_time_embedding(unet: MuseVUNet, sample: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda _, args: seen.append(args[1]))
    _run(unet, sample, text, condition_frames=1)
    hook.remove()
    return seen[0]


def test_condition_frame_time_embedding_is_zero_in_referencenet_variants(unets):
    sample, text = _inputs()
    for variant, expect_zero in (("musev", False), ("musev_referencenet", True)):
        temb = _resnet_time_embedding(unets[variant], sample, text)  # rows: frames of the one clip
        assert bool((temb[0] == 0).all()) is expect_zero
        assert (temb[1:] != 0).any(dim=1).all()


@pytest.mark.parametrize("variant", ["musev", "musev_referencenet"])
def test_temporal_weight_scales_the_temporal_branch(unets, variant):
    unet = unets[variant]
    sample, text = _inputs()
    trained = _run(unet, sample, text, condition_frames=1)
    weights = [p for name, p in unet.named_parameters() if name.endswith("temporal_weight")]
    saved = [p.detach().clone() for p in weights]
    with torch.no_grad():
        for p in weights:
            p.zero_()
    try:
        silenced = _run(unet, sample, text, condition_frames=1)
    finally:
        with torch.no_grad():
            for p, value in zip(weights, saved, strict=True):
                p.copy_(value)
    assert torch.allclose(silenced, _run(unet, sample, text, condition_frames=1, skip_temporal=True), atol=1e-5)
    assert not torch.allclose(silenced, trained, atol=1e-3)


def test_condition_frame_reaches_other_frames_through_reference_only_attention(unets):
    unet = unets["musev_referencenet"]
    sample, text = _inputs()
    swapped = sample.clone()
    swapped[:, :, 0] = _inputs(seed=1)[0][:, :, 0]
    for condition_frames, reaches in ((1, True), (0, False)):
        a = _run(unet, sample, text, condition_frames=condition_frames, skip_temporal=True)
        b = _run(unet, swapped, text, condition_frames=condition_frames, skip_temporal=True)
        assert (not torch.allclose(a[:, :, 1:], b[:, :, 1:], atol=1e-5)) is reaches


def test_ip_tokens_change_output_only_with_ip_adapter_layers(musev_dir, unets):
    projection = ImageProjection(tiny.TEXT_WIDTH, tiny.CLIP_EMBED_DIM)
    checkpoint = torch.load(musev_dir / "motion/musev_referencenet/ip_adapter_image_proj.bin", weights_only=True)
    load_weights(projection, image_projection_state(checkpoint, "ip_adapter_image_proj.bin"), "ip_adapter_image_proj.bin")
    ip_tokens = projection(torch.randn(1, tiny.CLIP_EMBED_DIM))
    assert ip_tokens.shape == (1, 4, tiny.TEXT_WIDTH)
    sample, text = _inputs()
    for variant, changes in (("musev", False), ("musev_referencenet", True)):
        plain = _run(unets[variant], sample, text, condition_frames=1)
        with_ip = _run(unets[variant], sample, text, condition_frames=1, ip_tokens=ip_tokens)
        assert (not torch.allclose(plain, with_ip, atol=1e-5)) is changes


def test_reference_features_are_fused_with_the_index_quirk(musev_dir, unets):
    folder = musev_dir / "motion/musev_referencenet/referencenet"
    referencenet = ReferenceNet(MuseVConfig.from_unet_config(json.loads((folder / "config.json").read_text())))
    load_weights(referencenet, torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True), "referencenet")
    sample, text = _inputs()
    with torch.no_grad():
        refer = referencenet(sample[:, :, 0], torch.randn(1, 4, tiny.TEXT_WIDTH))
    assert len(refer.down) == 9  # conv_in + 3 + 3 + 2 for three blocks of two layers
    unet = unets["musev_referencenet"]
    fused = _run(unet, sample, text, condition_frames=1, refer=refer)
    assert not torch.allclose(fused, _run(unet, sample, text, condition_frames=1), atol=1e-5)

    def perturbed(index: int) -> torch.Tensor:
        down = tuple(m + 1 if i == index else m for i, m in enumerate(refer.down))
        return _run(unet, sample, text, condition_frames=1, refer=ReferenceFeatures(down, refer.mid))

    # final block (2) reads maps [5, 6] (start 1 + 2*2), so maps 7 and 8 are never read
    assert not torch.allclose(perturbed(6), fused, atol=1e-5)
    assert torch.equal(perturbed(7), fused) and torch.equal(perturbed(8), fused)


# ---------------------------------------------------------------------------------------------------------------
# ControlNet


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory) -> ControlNetModel:
    folder, = tiny.build_controlnet(tmp_path_factory.mktemp("weights"))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    return ControlNetModel.from_pretrained(folder).eval()


def _control(controlnet: ControlNetModel, sample: torch.Tensor, text: torch.Tensor, seed: int = 0) -> ControlResiduals:
    frames = sample.shape[2]
    images = torch.rand(frames, 3, sample.shape[-2] * 8, sample.shape[-1] * 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        down, mid = controlnet(sample[0].transpose(0, 1), 500, text.expand(frames, -1, -1), controlnet_cond=images,
                               return_dict=False)
    return ControlResiduals(tuple(down), mid)


@pytest.mark.parametrize("variant", VARIANTS)
def test_controlnet_residuals_fit_the_unet_and_zero_ones_change_nothing(musev_dir, unets, controlnet, variant):
    unet = unets.get(variant) or _unet(musev_dir, variant)
    sample, text = _inputs()
    control = _control(controlnet, sample, text)
    assert len(control.down) == 9  # one per skip connection: conv_in + 3 + 3 + 2
    plain = _run(unet, sample, text, condition_frames=1)
    assert not torch.allclose(_run(unet, sample, text, condition_frames=1, control=control), plain, atol=1e-5)
    zero = ControlResiduals(tuple(torch.zeros_like(d) for d in control.down), torch.zeros_like(control.mid))
    assert torch.equal(_run(unet, sample, text, condition_frames=1, control=zero), plain)


def test_denoiser_controls_each_window_of_both_cfg_halves_with_its_own_images(unets, controlnet):
    generator = torch.Generator().manual_seed(0)
    windows, frames = 2, 1 + 2  # the condition frame, then a window of 2
    x = torch.randn(2 * windows, 4, frames, 8, 8, generator=generator)  # rows [uncond w0, w1; cond w0, w1]
    text = torch.randn(2, 5, tiny.TEXT_WIDTH, generator=generator)
    ip_tokens = torch.randn(2, 4, tiny.TEXT_WIDTH, generator=generator)
    images = torch.rand(windows, 3, frames, 64, 64, generator=generator)
    denoiser = MuseVDenoiser(unets["musev_referencenet"], condition_frames=1, motion_speed=8.0, controlnet=controlnet)

    def predict(control_images: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return denoiser(x, torch.tensor(500), text, ip_tokens, control_images=control_images)

    controlled = predict(images)
    assert controlled.shape == x.shape
    assert not torch.allclose(controlled, predict(None), atol=1e-5)
    other = images.clone()
    other[1] = torch.rand(3, frames, 64, 64, generator=generator)
    changed = (predict(other) - controlled).abs().flatten(1).amax(dim=1) > 1e-5
    assert changed.tolist() == [False, True, False, True]  # window 1's rows in both halves, only
