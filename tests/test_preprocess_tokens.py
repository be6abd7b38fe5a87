"""`avtool preprocess tokens`: one upstream training window per video, its VAE latents and BEATs features, on
generated videos and the tiny weights."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import run_avtool
from mediagen import clip

from avtool.errors import BadInput
from avtool.media import probe, read_frames
from avtool.pipelines.preprocess import TokensPreprocessOptions, plan_sample, preprocess_tokens
from avtool.training.tempotokens_config import FALLBACK_PROMPT

OPTIONS = TokensPreprocessOptions(num_frames=8, height=32, width=32, seed=0)  # 8 frames <-> 1/3 s of audio
SAMPLES = ["alpha", "beta"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two good videos (one with a caption beside it, one at 24 fps), one silent, one corrupt, one too short."""
    folder = tmp_path_factory.mktemp("videos")
    clip(folder / "alpha.mp4", seconds=1.5)
    (folder / "alpha.txt").write_text("a drummer <temp> <class>\n")
    clip(folder / "beta.mp4", seconds=1.5, fps=24, size="96x64")
    clip(folder / "silent.mp4", seconds=1.5, audio=False)
    clip(folder / "short.mp4", seconds=0.2)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    return folder


@pytest.fixture(scope="module")
def first_run(tiny_weights, videos, tmp_path_factory):
    """The first run through the CLI (--json summary)."""
    out = tmp_path_factory.mktemp("samples")
    run = run_avtool("preprocess", "tokens", videos, "-o", out, "--weights-dir", tiny_weights, "--num-frames", "8",
                     "--height", "32", "--width", "32", "--seed", "0", "--json", "-q", env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return out, json.loads(run.stdout)


def test_samples_hold_the_window_its_latents_beats_features_and_prompt(first_run):
    out, summary = first_run
    assert summary["written"] == 2 and (summary["height"], summary["width"]) == (32, 32)
    for name in SAMPLES:
        info = probe(out / f"{name}.mp4")
        assert (info.video.num_frames, info.video.width, info.video.height, info.video.fps) == (8, 32, 32, 24)
        assert abs(info.audio.duration - 8 / 24) < 0.01
        latent = torch.load(out / f"{name}.latent.pt", weights_only=True)
        assert latent["mean"].shape == latent["logvar"].shape == (1, 4, 8, 4, 4)  # (1, C, F, H/8, W/8)
        features = torch.load(out / f"{name}.beats.pt", weights_only=True)["features"]
        assert features.shape == (1, 8, 2 * 32) and features.dtype == torch.float32  # 1/3 s: 8 tokens; 2 layers x 32
    assert (out / "alpha.txt").read_text().strip() == "a drummer <temp> <class>"
    assert (out / "beta.txt").read_text().strip() == FALLBACK_PROMPT


def test_features_equal_the_models_run_by_hand(first_run, tiny_weights):
    from diffusers import AutoencoderKL

    from avtool.models.beats import load_beats
    from avtool.pipelines.tokens import audio_window, beats_waveform
    from avtool.weights.loading import load_checkpoint

    out, _ = first_run
    frames = torch.from_numpy(read_frames(out / "beta.mp4")).permute(0, 3, 1, 2) / 127.5 - 1
    vae = AutoencoderKL.from_pretrained(tiny_weights / "zeroscope_v2_576w" / "vae").eval()
    with torch.no_grad():
        mean = vae.encode(frames).latent_dist.mean
    torch.testing.assert_close(torch.load(out / "beta.latent.pt", weights_only=True)["mean"], mean.permute(1, 0, 2, 3)[None])
    beats = load_beats(load_checkpoint(tiny_weights / "beats" / "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt")).eval()
    samples, rate = audio_window(out / "beta.mp4", probe(out / "beta.mp4").audio, 0, 8 / 24)
    with torch.no_grad():
        features = beats.extract_layer_features(torch.from_numpy(beats_waveform(samples, rate))[None])
    torch.testing.assert_close(torch.load(out / "beta.beats.pt", weights_only=True)["features"], features)


def test_bad_videos_are_rejected_with_their_reasons(first_run):
    _, summary = first_run
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in summary["rejections"]}
    assert set(reasons) == {"silent.mp4", "corrupt.mp4", "short.mp4"}
    assert reasons["silent.mp4"] == "no audio track" and "not a readable" in reasons["corrupt.mp4"]
    assert reasons["short.mp4"].startswith("too short")


def test_a_rerun_skips_everything_and_remakes_a_cut_off_sample(first_run, videos, tiny_weights):
    out, _ = first_run
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    again = preprocess_tokens(videos, out, OPTIONS, tiny_weights, quiet=True)
    assert again.written == [] and sorted(p.name for p in again.skipped) == ["alpha.mp4", "beta.mp4"]
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before

    (out / "alpha.mp4").write_bytes((out / "alpha.mp4").read_bytes()[:1000])  # a write killed half-way
    redone = preprocess_tokens(videos, out, OPTIONS, tiny_weights, quiet=True)
    assert [p.name for p in redone.written] == ["alpha.mp4"] and probe(out / "alpha.mp4").video.num_frames == 8
    assert (out / "alpha.latent.pt").stat().st_mtime_ns != before["alpha.latent.pt"]  # its features are redone
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary left behind


def test_the_window_follows_upstreams_frame_rule(videos):
    """Every round(fps_src / fps)-th frame from a start drawn in [0, len / n - frames * n - 5], as dataset.py."""
    sample = plan_sample(videos / "alpha.mp4", videos / "x", OPTIONS, random.Random(3))  # 30 fps: every frame
    first = random.Random(3).randint(0, 45 - 8 - 5)
    assert sample.frames == tuple(range(first, first + 8)) and sample.audio_start == pytest.approx(first / 30)
    sparse = TokensPreprocessOptions(num_frames=8, fps=10)  # every 3rd: the range is empty, so from 30 x 3 = frame 90
    with pytest.raises(BadInput, match="8 frames every 3 from frame 90 need 112"):
        plan_sample(videos / "alpha.mp4", videos / "x", sparse, random.Random(3))
