"""MusicInfuser training (avtool.training.musicinfuser) on tiny weights and generated clips: the saved adapter is
upstream's file and loads in `avtool dance`, a single clip is overfit, sigma follows upstream's Beta schedule."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import MochiTransformer3DModel
from mediagen import clip
from safetensors import safe_open

from avtool.errors import BadInput
from avtool.models.mochi import MochiFlowModel
from avtool.models.musicinfuser import (
    AUDIO_CROSS_ATTN_LAYERS,
    WINDOW_METADATA_KEY,
    MusicInfuserTransformer,
    load_dance_transformer,
)
from avtool.pipelines.preprocess import DancePreprocessOptions, preprocess_dance
from avtool.training.config import OptimizerConfig, load_config
from avtool.training.loop import train
from avtool.training.musicinfuser import MusicInfuserTask, add_trainable_adapter, beta_parameter, sample_sigma, training_example
from avtool.training.musicinfuser_config import LoraKwargs, MusicInfuserConfig, MusicInfuserTrainingConfig, training_clips
from avtool.weights.layout import ADAPTER_FILE, ADAPTER_FOLDER, MOCHI_FOLDER
from avtool.weights.tiny.musicinfuser import LORA_KWARGS, TINY_AUDIO_LAYERS

REPO = Path(__file__).resolve().parents[1]
KEYS = REPO / "tests" / "data" / "musicinfuser_adapter_keys.json"  # the published adapter's 514 keys and shapes


@pytest.fixture(scope="module")
def clips_dir(tiny_weights, tmp_path_factory) -> Path:
    """Two preprocessed 13-frame clips, one per generated video."""
    videos = tmp_path_factory.mktemp("videos")
    for name in ("alpha", "beta"):
        clip(videos / f"{name}.mp4", seconds=1.0)
    out = tmp_path_factory.mktemp("clips")
    preprocess_dance(videos, out, DancePreprocessOptions(num_frames=13, crop="center", seed=0), tiny_weights, quiet=True)
    return out


def tiny_config(clips_dir: Path, **top) -> MusicInfuserConfig:
    training = MusicInfuserTrainingConfig(num_steps=40, warmup_steps=0, save_interval=0, num_qkv_checkpoint=2,
                                          num_ff_checkpoint=0)
    return MusicInfuserConfig(train_data_dir=str(clips_dir), audio_cross_attn_layers=TINY_AUDIO_LAYERS,
                              model=dataclasses.replace(MusicInfuserConfig().model, kwargs=LoraKwargs(**LORA_KWARGS)),
                              training=training, **top)


def randomise(task: MusicInfuserTask, seed: int = 1) -> None:
    """Give every trainable tensor (zero-initialised lora_B and to_out included) random values."""
    generator = torch.Generator().manual_seed(seed)
    task.load_trainable_state({name: torch.randn(value.shape, generator=generator) * 0.3
                               for name, value in task.trainable_state().items()})


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()


def test_full_size_adapter_has_the_published_keys_and_shapes():
    reference = json.loads(KEYS.read_text())
    with torch.device("meta"):
        transformer = MusicInfuserTransformer(**MochiTransformer3DModel().config)
        parameters = add_trainable_adapter(transformer, 768, AUDIO_CROSS_ATTN_LAYERS, LoraKwargs())
    assert {name: list(value.shape) for name, value in parameters.items()} == reference["shapes"]


def test_saved_adapter_is_upstreams_file_and_loads_in_dance(clips_dir, tiny_weights, tmp_path):
    task = MusicInfuserTask(tiny_config(clips_dir), tiny_weights, "cpu")
    randomise(task)
    path = task.save_result(tmp_path, 7)
    assert path == tmp_path / "model_7.adapter.safetensors"

    # Key for key, shape for shape and metadata as the tiny published-layout adapter (upstream's names, ranks 4/2).
    saved, metadata = read_adapter(path)
    published, published_metadata = read_adapter(tiny_weights / ADAPTER_FOLDER / ADAPTER_FILE)
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in published.items()}
    assert json.loads(metadata["kwargs"]) == LORA_KWARGS and metadata == published_metadata
    # ...and named as the full-size list names them (the tiny DiT's last block stands for block 47).
    last = len(task.transformer.transformer_blocks) - 1
    full_names = {re.sub(rf"^blocks\.{last}\.", "blocks.47.", key) for key in saved}
    assert full_names <= set(json.loads(KEYS.read_text())["shapes"])
    for key, value in task.trainable_state().items():
        assert torch.equal(saved[key], value), key

    # The dance loader merges the file's LoRA; its model predicts what the unmerged in-memory model predicts.
    mochi = tiny_weights / MOCHI_FOLDER / "transformer"
    loaded = load_dance_transformer(mochi, sorted(mochi.glob("*.safetensors")), path, "cpu", torch.float32)
    example = training_example(task.clips[:1], torch.Generator().manual_seed(0), 0, task.config,
                               task.latents_mean, task.latents_std)
    inputs = (example.noisy, example.sigma, example.text, example.text_mask)
    with torch.no_grad():
        trained = task.flow(*inputs, audio_features=example.audio)
        reloaded = MochiFlowModel(loaded)(*inputs, audio_features=example.audio)
        without_audio = task.flow(*inputs, audio_features=example.audio * 0)
    assert not torch.allclose(trained, without_audio, atol=1e-3)  # the audio adapter is in play
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)


def test_audio_attention_window_is_kept_in_the_adapter_file_for_dance(clips_dir, tiny_weights, tmp_path):
    task = MusicInfuserTask(tiny_config(clips_dir, audio_attention_window=0), tiny_weights, "cpu")
    randomise(task)
    path = task.save_result(tmp_path, 1)
    assert read_adapter(path)[1][WINDOW_METADATA_KEY] == "0"
    mochi = tiny_weights / MOCHI_FOLDER / "transformer"
    loaded = load_dance_transformer(mochi, sorted(mochi.glob("*.safetensors")), path, "cpu", torch.float32)
    assert loaded.config.audio_attention_window == 0
    example = training_example(task.clips[:1], torch.Generator().manual_seed(0), 0, task.config,
                               task.latents_mean, task.latents_std)
    inputs = (example.noisy, example.sigma, example.text, example.text_mask)
    with torch.no_grad():
        trained = task.flow(*inputs, audio_features=example.audio)
        torch.testing.assert_close(MochiFlowModel(loaded)(*inputs, audio_features=example.audio), trained,
                                   atol=1e-5, rtol=1e-5)
        loaded.register_to_config(audio_attention_window=None)  # the same weights attending to the whole clip
        assert not torch.allclose(MochiFlowModel(loaded)(*inputs, audio_features=example.audio), trained, atol=1e-4)


def test_fresh_adapter_leaves_the_dit_unchanged(clips_dir, tiny_weights):
    task = MusicInfuserTask(tiny_config(clips_dir), tiny_weights, "cpu")
    state = task.trainable_state()
    zero_init = [key for key in state if key.endswith("lora_B") or ".to_out." in key]
    assert zero_init and all(not state[key].any() for key in zero_init)
    assert all(state[key].any() for key in state if key.endswith("lora_A"))
    mochi = tiny_weights / MOCHI_FOLDER / "transformer"
    base = load_dance_transformer(mochi, sorted(mochi.glob("*.safetensors")), None, "cpu", torch.float32)
    example = training_example(task.clips[:1], torch.Generator().manual_seed(0), 0, task.config,
                               task.latents_mean, task.latents_std)
    inputs = (example.noisy, example.sigma, example.text, example.text_mask)
    with torch.no_grad():
        torch.testing.assert_close(task.flow(*inputs, audio_features=example.audio), MochiFlowModel(base)(*inputs))


def test_single_clip_overfit_drops_the_loss(clips_dir, tiny_weights, tmp_path):
    # The tiny random VAE's posterior has logvar ~ 0, i.e. is mostly noise: make the clip's latent z certain, so that
    # what can be learnt is clear. The reference is an oracle that knows z but not the step's noise ε, which predicts
    # E[target | z] = (z - mean) / std; the trained model must close most of the gap from its start to it.
    single = tmp_path / "clip"
    single.mkdir()
    for source in clips_dir.glob("alpha.seg0.*"):
        (single / source.name).symlink_to(source)
    latent = single / "alpha.seg0.latent.pt"
    z = torch.load(latent, weights_only=True)["mean"]
    latent.unlink()
    torch.save({"mean": z, "logvar": torch.full_like(z, -30.0)}, latent)
    config = dataclasses.replace(tiny_config(single, beta_beta=None), optimizer=OptimizerConfig(lr=1e-2))
    task = MusicInfuserTask(config, tiny_weights, "cpu")
    assert len(task.dataset()) == 1
    oracle_prediction = (z - task.latents_mean.view(1, -1, 1, 1, 1)) / task.latents_std.view(1, -1, 1, 1, 1)

    def fixed_losses() -> tuple[float, float]:  # the model's and the oracle's mean loss on the same 8 draws
        generator, model, oracle = torch.Generator().manual_seed(123), 0.0, 0.0
        for _ in range(8):
            example = training_example(task.dataset(), generator, 0, config, task.latents_mean, task.latents_std)
            with torch.no_grad():
                model += task.example_loss(example).item() / 8
            oracle += torch.nn.functional.mse_loss(oracle_prediction, example.target).item() / 8
        return model, oracle

    before, oracle = fixed_losses()
    result = train(task, tmp_path / "run", config, quiet=True)
    after, _ = fixed_losses()
    assert result.step == config.training.num_steps
    assert before - after > 0.6 * (before - oracle), (before, after, oracle)
    assert (tmp_path / "run" / f"model_{result.step}.adapter.safetensors").is_file()


def test_sigma_follows_upstreams_beta_uniform_schedule():
    # upstream train.py: beta = 1 + (beta_beta - 1) * exp(-(step / half_life) * log(2)), sigma ~ Beta(1, beta)
    assert beta_parameter(0, 3, 200) == 3
    assert beta_parameter(200, 3, 200) == pytest.approx(2)
    assert beta_parameter(400, 3, 200) == pytest.approx(1.5)
    assert beta_parameter(123, None, 200) == 1
    for beta in (3.0, 1.25, 1.0):
        sigma = sample_sigma(200_000, beta, torch.Generator().manual_seed(0)).double()
        assert 0 <= sigma.min() and sigma.max() <= 1
        grid = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
        empirical = (sigma[:, None] <= grid).double().mean(0)
        assert torch.allclose(empirical, 1 - (1 - grid) ** beta, atol=5e-3)  # Beta(1, beta)'s CDF
        reference = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(beta)).sample((200_000,)).double()
        assert sigma.mean().item() == pytest.approx(reference.mean().item(), abs=3e-3)
        assert sigma.mean().item() == pytest.approx(1 / (1 + beta), abs=3e-3)


def test_shipped_config_has_upstreams_values():
    config = load_config(REPO / "configs" / "music_infuser.yaml", MusicInfuserConfig)
    assert (config.seed, config.basic_prompt_ratio, config.beta_beta, config.beta_half) == (42, 0.2, 3, 200)
    assert (config.optimizer.lr, config.optimizer.weight_decay) == (1e-4, 0.0)
    assert dataclasses.asdict(config.model.kwargs) == {"qkv_proj_lora_rank": 64, "qkv_proj_lora_alpha": 64,
                                                       "qkv_proj_lora_dropout": 0.0, "out_proj_lora_rank": 64,
                                                       "out_proj_lora_alpha": 64, "out_proj_lora_dropout": 0.0}
    training = config.training
    assert (training.num_steps, training.warmup_steps, training.save_interval, training.caption_dropout) == (4000, 200, 500, 0.1)
    assert config.audio_cross_attn_layers is None  # upstream's layers, AUDIO_CROSS_ATTN_LAYERS


@pytest.mark.parametrize("text, named", [("training:\n  caption_drop: 0.1\n", "training.caption_drop"),
                                         ("model:\n  kwargs:\n    rank: 4\n", "model.kwargs.rank"),
                                         ("beta_gamma: 2\n", "beta_gamma")])
def test_unknown_config_key_is_refused_naming_it(tmp_path, text, named):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=f"unknown key {re.escape(named)}"):
        load_config(path, MusicInfuserConfig)


def test_incomplete_clips_are_skipped(clips_dir, tmp_path):
    partial = tmp_path / "clips"
    partial.mkdir()
    for source in clips_dir.iterdir():
        if source.name.startswith("alpha") or not source.name.endswith(".audio_wav2vec.pt"):
            (partial / source.name).symlink_to(source)
    assert [c.base.name for c in training_clips(tiny_config(partial))] == ["alpha.seg0"]


def test_checkpointed_blocks_give_the_same_gradients(clips_dir, tiny_weights):
    def gradients(checkpointed: int) -> dict[str, torch.Tensor]:
        config = tiny_config(clips_dir)
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, num_qkv_checkpoint=checkpointed))
        task = MusicInfuserTask(config, tiny_weights, "cpu")
        randomise(task)
        task.loss(task.dataset(), torch.Generator().manual_seed(0), 0).backward()
        return {name: value.grad for name, value in task.parameters.items()}

    plain, checkpointed = gradients(0), gradients(4)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
