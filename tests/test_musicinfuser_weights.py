"""MusicInfuser checkpoints: the real adapter layout on a full-size meta model, tiny layouts, refusals."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import MochiTransformer3DModel
from safetensors import safe_open
from safetensors.torch import save_file

from avtool.errors import WeightsError
from avtool.models.musicinfuser import (
    AUDIO_CROSS_ATTN_LAYERS,
    MusicInfuserTransformer,
    check_adapter,
    convert_adapter,
)
from avtool.pipelines import dance as pipeline
from avtool.weights.tiny import build_tiny

# The published adapter's 514 keys and shapes (copy of shared/reference/keys/musicinfuser_adapter.json).
KEYS = Path(__file__).parent / "data" / "musicinfuser_adapter_keys.json"
UPSTREAM_KWARGS = {"qkv_proj_lora_rank": 64, "qkv_proj_lora_alpha": 64, "qkv_proj_lora_dropout": 0.0,
                   "out_proj_lora_rank": 64, "out_proj_lora_alpha": 64, "out_proj_lora_dropout": 0.0}


def test_real_adapter_layout_fits_full_size_mochi_on_meta():
    reference = json.loads(KEYS.read_text())
    shapes = reference["shapes"]
    assert len(shapes) == reference["num_tensors"] == 514
    adapter = {key: torch.empty(shape, dtype=torch.bfloat16, device="meta") for key, shape in shapes.items()}
    assert sum(tensor.numel() for tensor in adapter.values()) == reference["num_parameters"]

    converted = convert_adapter(adapter, {"kwargs": json.dumps(UPSTREAM_KWARGS)})
    assert converted.used_keys == set(shapes) and converted.unused_keys == []
    assert converted.audio_cross_attn_layers == AUDIO_CROSS_ATTN_LAYERS == tuple(reference["audio_cross_attn_after_blocks"])

    with torch.device("meta"):
        base = MochiTransformer3DModel()  # diffusers' defaults are Mochi-1-preview's configuration
        model = MusicInfuserTransformer(audio_dim=converted.audio_dim)
    base_shapes = {key: tuple(value.shape) for key, value in base.state_dict().items()}
    model_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert len(converted.lora) == 48 * 8 - 1
    for key, factors in converted.lora.items():
        assert base_shapes[key] == factors.shape == tuple(factors.delta().shape), key
        assert factors.scale == 1.0
    for key, tensor in converted.audio.items():
        assert model_shapes[key] == tuple(tensor.shape), key
    assert set(model_shapes) - set(base_shapes) == set(converted.audio)  # every audio parameter comes from the file
    check_adapter(converted, model)


def genmo_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()


@pytest.fixture
def weights_copy(tiny_weights, tmp_path):
    return shutil.copytree(tiny_weights, tmp_path / "weights")


def rewrite_adapter(weights: Path, edit) -> None:
    path = weights / "musicinfuser" / "musicinfuser.safetensors"
    state, metadata = genmo_file(path)
    edit(state, metadata)
    save_file(state, str(path), metadata=metadata)


def rename(old, new):
    def edit(state, metadata):
        state[new] = state.pop(old)
    return edit


@pytest.mark.parametrize(("edit", "named"), [
    (rename("audio_cross_attn_blocks.1.to_k.weight", "audio_cross_attn_blocks.1.to_key.weight"),
     ["unexpected keys: audio_cross_attn_blocks.1.to_key.weight", "missing keys: audio_cross_attn_blocks.1.to_k.weight"]),
    (rename("blocks.2.attn.qkv_y.lora_B", "blocks.2.attn.qkv_y.lora_b"),
     ["unexpected keys: blocks.2.attn.qkv_y.lora_b", "missing keys: blocks.2.attn.qkv_y.lora_B"]),
    (rename("blocks.3.attn.proj_x.lora_A", "blocks.3.attn.proj_y.lora_A"),  # block 3 (the last) has no proj_y
     ["unexpected keys: blocks.3.attn.proj_y.lora_A", "missing keys: blocks.3.attn.proj_x.lora_A"]),
    (rename("blocks.1.attn.proj_y.lora_A", "blocks.9.attn.proj_y.lora_A"),
     ["unexpected keys: blocks.9.attn.proj_y.lora_A", "missing keys: blocks.1.attn.proj_y.lora_A"]),
    (lambda state, metadata: state.update({"pos_frequencies": torch.zeros(3)}), ["unexpected keys: pos_frequencies"]),
    (lambda state, metadata: state.pop("audio_projection.projection.2.bias"),
     ["missing keys: audio_projection.projection.2.bias"]),
    (lambda state, metadata: state.update({"audio_cross_attn_blocks.0.to_v.bias": torch.zeros(16)}),
     ["audio_cross_attn_blocks.0.to_v.bias (16,) != (32,)"]),
    (lambda state, metadata: state.update({"blocks.0.attn.qkv_x.lora_A": torch.zeros(4, 16)}),
     ["transformer_blocks.0.attn1.to_q.weight (32, 16) != (32, 32)"]),
    (lambda state, metadata: state.update({"blocks.0.attn.qkv_x.lora_A": torch.zeros(3, 32)}),
     ["blocks.0.attn.qkv_x.lora_A/B shapes (3, 32)/(96, 4) do not fit rank 4"]),
    (lambda state, metadata: metadata.pop("kwargs"), ["kwargs"]),
    (lambda state, metadata: metadata.update({"avtool_audio_cross_attn_layers": "[1, 4]"}), ["(1, 4)"]),
    (lambda state, metadata: metadata.update({"avtool_audio_attention_window": "-1"}), ["'-1', not a whole number"]),
])
def test_adapter_that_does_not_fit_is_refused_naming_the_keys(weights_copy, edit, named):
    rewrite_adapter(weights_copy, edit)
    with pytest.raises(WeightsError) as error:
        pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.float32)
    assert error.value.exit_code == 3
    assert "musicinfuser.safetensors" in error.value.message
    for text in named:
        assert text in error.value.message
    assert error.value.hint.startswith("run: avtool download-weights musicinfuser --dir")


def test_renamed_base_transformer_key_is_refused(weights_copy):
    transformer = weights_copy / "mochi-1-preview" / "transformer"
    index = json.loads((transformer / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shard = transformer / index["weight_map"]["proj_out.weight"]
    with safe_open(shard, framework="pt") as file:
        state, metadata = {key: file.get_tensor(key) for key in file.keys()}, file.metadata()
    state["proj_output.weight"] = state.pop("proj_out.weight")
    save_file(state, str(shard), metadata=metadata)
    with pytest.raises(WeightsError, match=r"unexpected keys: proj_output\.weight, missing keys: proj_out\.weight"):
        pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.float32, adapter=False)


@pytest.mark.parametrize("victim", ["musicinfuser/musicinfuser.safetensors", "mochi-1-preview/transformer/config.json",
                                    "mochi-1-preview/transformer/diffusion_pytorch_model-00002-of-00002.safetensors"])
def test_missing_weight_files_are_refused_before_loading(weights_copy, victim):
    (weights_copy / victim).unlink()
    with pytest.raises(WeightsError, match="missing") as error:
        pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.float32)
    assert victim in error.value.message and "download-weights" in error.value.hint


def test_truncated_adapter_is_refused(weights_copy):
    path = weights_copy / "musicinfuser" / "musicinfuser.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="unreadable safetensors file"):
        pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.float32)


def test_tiny_mochi_layout_loads_with_diffusers_and_transformers(tiny_weights):
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline
    from transformers import AutoTokenizer, T5EncoderModel, T5TokenizerFast

    folder = tiny_weights / "mochi-1-preview"
    pipeline = MochiPipeline.from_pretrained(folder, force_zeros_for_empty_prompt=True)
    assert isinstance(pipeline.transformer, MochiTransformer3DModel)
    assert isinstance(pipeline.vae, AutoencoderKLMochi) and isinstance(pipeline.text_encoder, T5EncoderModel)
    assert isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler) and pipeline.scheduler.config.invert_sigmas

    for loader in (T5TokenizerFast, AutoTokenizer):
        tokenizer = loader.from_pretrained(folder / "tokenizer")
        tokens = tokenizer(["a professional dancer", ""], padding="max_length", max_length=256, truncation=True)
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)  # as T5's
        assert tokens.input_ids[0][:4] == tokenizer.convert_tokens_to_ids(["▁a", "▁professional", "▁dancer", "</s>"])
        assert tokens.input_ids[1][:2] == [1, 0] and len(tokens.input_ids[1]) == 256
    assert max(tokenizer("Zebra-42 ~ünïcode").input_ids) < pipeline.text_encoder.config.vocab_size

    with torch.no_grad():
        frames = pipeline.vae.decode(torch.randn(1, 12, 3, 4, 6)).sample
    assert frames.shape == (1, 3, 13, 32, 48)  # temporal ×6 (minus the causal 5), spatial ×8


def test_tiny_wav2vec_layout_loads_with_transformers(tiny_weights):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tiny_weights / "wav2vec2-base-960h"
    model = Wav2Vec2Model.from_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    assert extractor.do_normalize and not extractor.return_attention_mask and extractor.sampling_rate == 16000
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Wav2Vec2ForCTC"]
    assert model.config.conv_kernel == [10, 3, 3, 3, 3, 2, 2] and model.config.conv_stride == [5, 2, 2, 2, 2, 2, 2]


def test_tiny_builds_are_deterministic_and_small(tiny_weights, tmp_path):
    build_tiny(tmp_path, ["mochi-1-preview", "musicinfuser", "vidmuse", "tempotokens", "musev", "controlnet-openpose", "d2m"])  # what the tiny_weights fixture holds

    def digest(path: Path) -> str:
        if path.suffix != ".safetensors":
            return hashlib.sha256(path.read_bytes()).hexdigest()
        state, metadata = genmo_file(path)  # safetensors orders its metadata header arbitrarily: compare contents
        content = hashlib.sha256(json.dumps(sorted(metadata.items())).encode())
        for key in sorted(state):
            content.update(key.encode() + state[key].view(-1).view(torch.uint8).numpy().tobytes())
        return content.hexdigest()

    def digests(root: Path) -> dict[str, str]:
        return {str(path.relative_to(root)): digest(path) for path in sorted(root.rglob("*")) if path.is_file()}

    first, second = digests(tiny_weights), digests(tmp_path)
    assert first == second and len(first) > 15
    assert sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file()) < 24_000_000  # five models


@pytest.mark.parametrize("shard_size", ["200KB", "10GB"])
def test_bf16_variant_files_load_like_the_default_ones(weights_copy, shard_size):
    transformer = weights_copy / "mochi-1-preview" / "transformer"
    expected = pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.bfloat16, adapter=False).state_dict()
    MochiTransformer3DModel.from_pretrained(transformer).to(torch.bfloat16).save_pretrained(
        transformer, variant="bf16", max_shard_size=shard_size)
    for path in transformer.glob("diffusion_pytorch_model*"):
        if ".bf16" not in path.name:
            path.unlink()
    loaded = pipeline.load_transformer(pipeline.check_weights(weights_copy), "cpu", torch.bfloat16, adapter=False).state_dict()
    # a bf16 file holds pos_frequencies and the norm scales rounded to bf16; they are loaded into fp32 all the same
    rounded = {key: value.to(torch.bfloat16).to(value.dtype) for key, value in expected.items()}
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[key], rounded[key]) for key in expected)
