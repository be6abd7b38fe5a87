"""`avtool tokens` (TempoTokens) on tiny weights: lengths, outputs, reproducibility, round-robin windows, bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_avtool
from mediagen import clip, ffmpeg, tone
from test_cli import REJECT_CHILD

from avtool.errors import BadInput
from avtool.media import probe, read_frames
from avtool.pipelines import tokens as pipeline
from avtool.pipelines.common import GenerationOptions


def drums(path, seconds: float = 2.5):
    """Clicks on a 300 Hz tone: a sound with onsets, in stereo at 44.1 kHz."""
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}:beep_factor=4", "-ac", "2", "-ar", "44100", str(path))
    return path


def test_audio_tokens_follow_beats_patching():
    assert pipeline.audio_token_count(2.0) == 96  # 198 Kaldi frames -> 12 time x 8 frequency patches (upstream)
    assert pipeline.audio_token_count(1.0) == 48
    assert pipeline.audio_token_count(0.1) == 0
    assert pipeline.usable_tokens(96, 24) == 96 and pipeline.usable_tokens(100, 24) == 96


def test_length_options_default_to_each_other():
    assert pipeline.resolve_length(pipeline.TokensRequest()) == pipeline.Shape(24, 2.0, 0, 0, 24)
    assert pipeline.resolve_length(pipeline.TokensRequest(duration=3.0)).num_frames == 36
    assert pipeline.resolve_length(pipeline.TokensRequest(num_frames=48)).duration == 4.0
    assert pipeline.resolve_length(pipeline.TokensRequest(num_frames=48, window_size=12)).window == 12
    with pytest.raises(BadInput, match="must divide --num-frames 24"):
        pipeline.resolve_length(pipeline.TokensRequest(window_size=5))
    with pytest.raises(BadInput, match="fewer than the 24 frames"):
        pipeline.resolve_length(pipeline.TokensRequest(duration=0.3, num_frames=24))


def test_bad_inputs_and_options_exit_2_and_write_nothing(tiny_weights, tmp_path):
    out = tmp_path / "out"
    sound = drums(tmp_path / "drums.wav")
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2.5", str(tmp_path / "silent.wav"))
    tone(tmp_path / "blip.wav", seconds=0.1)
    clip(tmp_path / "video_only.mp4", seconds=1, audio=False)
    cases = [
        ([tmp_path / "silent.wav"], "is silent"),
        ([tmp_path / "blip.wav"], "runs past the end of its audio"),
        ([tmp_path / "blip.wav", "--duration", "0.1"], "fewer than the 1 frames"),
        ([tmp_path / "video_only.mp4"], "has no audio track"),
        ([sound, "--mapper", "jazz"], "--mapper jazz: unknown mapper"),
        ([sound, "--window-size", "5"], "--window-size 5: must divide --num-frames 24"),
        ([sound, "--height", "100"], "--height 100: must be a multiple of 8"),
        ([sound, "--guidance", "nan"], "--guidance nan"),
    ]
    for args, message in cases:  # refused before torch, diffusers or transformers is imported
        run = subprocess.run([sys.executable, "-c", REJECT_CHILD, "tokens", *map(str, args), "--weights-dir", str(tiny_weights),
                              "--output-dir", str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.stdout.strip() == "exit=2 heavy=" and message in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
    assert not out.exists()


def test_missing_mapper_names_the_download(tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    run = run_avtool("tokens", drums(tmp_path / "drums.wav"), "--weights-dir", weights)
    assert run.returncode == 3 and "download-weights tempotokens" in run.stderr, run.stderr


def test_tokens_writes_the_video_with_its_audio_and_a_seed_repeats_it(tiny_weights, tmp_path):
    """One CLI run, two identical sounds under two names and one seed: two videos with identical frames."""
    first = drums(tmp_path / "a.wav")
    (tmp_path / "b.wav").write_bytes(first.read_bytes())
    out = tmp_path / "out"
    run = run_avtool("tokens", first, tmp_path / "b.wav", "--weights-dir", tiny_weights, "--seed", "2", "--steps", "3",
                     "--num-frames", "12", "--output-dir", out, "--json", "--prompt", "a drummer on stage")
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["output"] for r in results] == [str(out / "a_tokens.mp4"), str(out / "b_tokens.mp4")]
    info = probe(out / "a_tokens.mp4")
    assert info.video.num_frames == 12 and info.video.fps == pytest.approx(12)
    assert (info.video.width, info.video.height) == (64, 64)  # the tiny UNet's own size
    assert info.audio is not None and info.audio.duration == pytest.approx(1.0, abs=0.05)
    frames = {name: read_frames(out / f"{name}_tokens.mp4") for name in ("a", "b")}
    assert np.array_equal(frames["a"], frames["b"]) and frames["a"].std() > 1  # same seed, same frames; not blank
    sidecar = json.loads((out / "a_tokens.mp4.json").read_text())
    assert sidecar["seed"] == 2 and sidecar["subcommand"] == "tokens" and sidecar["options"]["num_frames"] == 12


def test_round_robin_windows_and_another_seed(tiny_weights, tmp_path):
    sound = drums(tmp_path / "drums.wav", seconds=3)
    videos = {}
    for name, seed, window in (("whole", 4, None), ("windows", 4, 4), ("other", 5, None)):
        opts = GenerationOptions(output_dir=tmp_path / name, seeds=[seed], steps=2, weights_dir=tiny_weights, quiet=True)
        request = pipeline.TokensRequest(num_frames=12, window_size=window, duration=2.0)
        [result] = list(pipeline.tokens([sound], request, opts))
        videos[name] = read_frames(result["output"])
    assert videos["whole"].shape == videos["windows"].shape == (12, 64, 64, 3)
    assert not np.array_equal(videos["whole"], videos["other"])
    # windows of 4 frames see less of the video than one window of 12: a different, still valid video
    assert not np.array_equal(videos["whole"], videos["windows"]) and videos["windows"].std() > 1


def test_a_mapper_for_other_models_is_a_weights_error(tiny_weights, tmp_path):
    import torch

    from avtool.models.tempotokens import AudioTokenMapper

    torch.save(AudioTokenMapper(16, 8, 32).state_dict(), tmp_path / "other.pth")
    torch.save({"fc1.weight": torch.zeros(2, 2)}, tmp_path / "broken.pth")
    for mapper, message in (("other.pth", "does not fit this BEATs (64 features)"), ("broken.pth", "missing keys")):
        run = run_avtool("tokens", drums(tmp_path / "drums.wav"), "--mapper", tmp_path / mapper, "--weights-dir", tiny_weights,
                         "--output-dir", tmp_path / "out")
        assert run.returncode == 3 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "out" / "drums_tokens.mp4").exists()


def test_half_precision_runs_the_unet_and_vae_in_their_dtype_on_fp32_latents(tiny_weights, tmp_path):
    # the sampler carries fp32 latents (fp32 guidance and scheduler steps); --dtype bf16 (fp16 on CUDA by default)
    # once fed them to the bf16 UNet and VAE as they were, which failed on an H200 ("Input type (float) and bias type")
    opts = GenerationOptions(output_dir=tmp_path, seeds=[1], steps=2, weights_dir=tiny_weights, dtype="bf16", quiet=True)
    [result] = list(pipeline.tokens([drums(tmp_path / "drums.wav")], pipeline.TokensRequest(num_frames=4), opts))
    assert read_frames(result["output"]).shape == (4, 64, 64, 3)
    assert json.loads(Path(result["sidecar"]).read_text())["dtype"] == "bfloat16"
