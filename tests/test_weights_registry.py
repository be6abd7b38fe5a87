"""The registry's entries and the file selection rules applied to hub listings."""

import pytest

from avtool.errors import BadInput
from avtool.weights.download import select_files
from avtool.weights.registry import MODELS, get_model, models_needed_by


def test_every_model_of_the_issue_is_registered_with_plain_folders():
    folders = {m: [c.folder for c in MODELS[m].components] for m in MODELS}
    assert folders == {
        "mochi-1-preview": ["mochi-1-preview"],
        "musicinfuser": ["musicinfuser", "wav2vec2-base-960h"],
        "vidmuse": ["vidmuse", "encodec_32khz", "clip-vit-base-patch32"],
        "musev": ["musev"],
        "controlnet-openpose": ["control_v11p_sd15_openpose"],
        "tempotokens": ["zeroscope_v2_576w", "beats", "tempotokens"],
        "d2m": ["dmae1d-ATC32-v3", "d2m"],
    }
    assert [m.id for m in models_needed_by("dance")] == ["mochi-1-preview", "musicinfuser"]
    assert [m.id for m in models_needed_by("animate")] == ["musev", "controlnet-openpose"]
    dmae, trained = MODELS["d2m"].components
    assert (dmae.repo, dmae.revision) == ("archinetai/dmae1d-ATC32-v3", "3d43b811b83fa395d5ccd6cf58b796b85fddd1d2")
    assert trained.kind == "manual" and "avtool train configs/d2m.yaml" in trained.manual  # D2M publishes no weights
    assert trained.files == ("dancecondation_test_final.pt", "MOT_final.pt")


def test_sources():
    mochi, = MODELS["mochi-1-preview"].components
    assert (mochi.repo, mochi.revision, mochi.variants) == ("genmo/mochi-1-preview", "main", ("bf16",))
    assert MODELS["musicinfuser"].components[0].allow == ("musicinfuser.safetensors",)
    assert MODELS["vidmuse"].components[0].allow == ("state_dict.bin", "compression_state_dict.bin")
    controlnet, = MODELS["controlnet-openpose"].components
    assert controlnet.repo == "lllyasviel/control_v11p_sd15_openpose"
    _, beats, mapper = MODELS["tempotokens"].components
    assert beats.kind == "url" and beats.url.startswith("https://") and beats.files[0] in beats.url
    assert mapper.kind == "manual" and "guyyariv/TempoTokens" in mapper.manual
    assert mapper.files == ("vggsound/learned_embeds.pth", "landscape/learned_embeds.pth", "audioset_drum/learned_embeds.pth")
    for model in MODELS.values():
        for component in model.components:
            assert component.approx_gb > 0 and component.licence


def test_unknown_model_is_bad_input():
    with pytest.raises(BadInput, match="unknown model 'mochi'"):
        get_model("mochi")


LISTING = [
    "README.md", "model_index.json", "dit.safetensors", "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "transformer/diffusion_pytorch_model.bf16-00001-of-00001.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.bf16.json",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.bin.index.json",
]
ALLOW = ("model_index.json", "scheduler/*", "text_encoder/*", "transformer/*", "vae/*")


def test_selection_without_variant_takes_the_untagged_safetensors():
    assert select_files(LISTING, ALLOW) == sorted([
        "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors",
    ])


def test_selection_with_variant_where_a_folder_offers_it():
    selected = select_files(LISTING, ALLOW, variant="bf16")
    assert [p for p in selected if p.startswith("transformer/")] == [
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.bf16-00001-of-00001.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.bf16.json",
    ]
    assert "vae/diffusion_pytorch_model.safetensors" in selected  # no bf16 there: the default files


def test_selection_keeps_pickles_where_there_is_no_safetensors():
    listing = ["motion/musev/unet/config.json", "motion/musev/unet/diffusion_pytorch_model.bin",
               "motion/musev_referencenet/ip_adapter_image_proj.bin", "insightface/x.onnx"]
    assert select_files(listing, ("motion/musev/*", "motion/musev_referencenet/*")) == listing[:3]
