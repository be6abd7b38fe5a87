"""`avtool preprocess dance` (called directly): clips, captions and cached features on generated videos, tiny weights."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mediagen import clip

from avtool.errors import BadInput, WeightsError
from avtool.media import probe, read_frames
from avtool.media.clips import CropWindow, crop_window
from avtool.pipelines.preprocess import DancePreprocessOptions, clip_seconds, preprocess_dance, segment_starts

REPO = Path(__file__).resolve().parents[1]
OPTIONS = DancePreprocessOptions(num_frames=13, clips_per_minute=60, caption="a street dance", seed=0)  # 2 clips of 0.5 s per 2 s video
CLIPS = ["alpha.seg0", "alpha.seg1", "beta.seg0", "beta.seg1"]
FEATURE_FILES = [".latent.pt", ".embed_.pt", ".embed.pt", ".audio_wav2vec.pt"]


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two good videos (one with a caption beside it), one silent, one corrupt, one too short for a clip."""
    folder = tmp_path_factory.mktemp("videos")
    clip(folder / "alpha.mp4", seconds=2.0)
    (folder / "alpha.txt").write_text("a robot dancing\n")
    clip(folder / "beta.mp4", seconds=2.0)
    clip(folder / "silent.mp4", seconds=2.0, audio=False)
    clip(folder / "short.mp4", seconds=0.3)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    return folder


@pytest.fixture(scope="module")
def first_run(weights, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    return out, preprocess_dance(videos, out, OPTIONS, weights, quiet=True)


def test_clips_are_cut_at_the_weights_size_and_30_fps_with_audio(first_run):
    out, summary = first_run
    assert sorted(path.name for path in summary.written) == [f"{name}.mp4" for name in CLIPS]
    assert summary.size == (32, 48)  # the tiny transformer's sample size x 8
    for name in CLIPS:
        info = probe(out / f"{name}.mp4")
        assert (info.video.width, info.video.height, info.video.fps) == (48, 32, 30)
        assert info.video.num_frames == round(clip_seconds(13) * 30) == 15
        assert info.audio is not None and info.audio.sample_rate == 44100


def test_every_clip_gets_its_caption_and_features_with_the_documented_shapes(first_run):
    out, _ = first_run
    for name in CLIPS:
        assert (out / f"{name}.txt").read_text().strip() == ("a robot dancing" if name.startswith("alpha") else "a street dance")
        latent = torch.load(out / f"{name}.latent.pt", weights_only=True)
        assert latent["mean"].shape == latent["logvar"].shape == (1, 12, 3, 4, 6)  # 13 frames -> 3, 32x48 px -> 4x6
        for suffix in (".embed_.pt", ".embed.pt"):
            embed = torch.load(out / f"{name}{suffix}", weights_only=True)
            assert [m.shape for m in embed["y_mask"]] == [(1, 256)] and embed["y_mask"][0].dtype == torch.bool
            assert [f.shape for f in embed["y_feat"]] == [(1, 256, 32)] and embed["y_feat"][0].dtype == torch.float32
        audio = torch.load(out / f"{name}.audio_wav2vec.pt", weights_only=True)["audio_embeddings"]
        assert audio.shape == (1, 24, 32)  # wav2vec2's conv stack on ceil(16000 x 0.5) samples


def test_features_equal_the_models_run_by_hand(first_run, weights):
    from diffusers import AutoencoderKLMochi

    from avtool.models.musicinfuser import Wav2VecEncoder
    from avtool.pipelines.dance import load_t5, t5_embed, wave_16k

    out, _ = first_run
    name = out / "alpha.seg1"
    frames = torch.from_numpy(read_frames(f"{name}.mp4", num_frames=13)).permute(3, 0, 1, 2)[None] / 127.5 - 1
    vae = AutoencoderKLMochi.from_pretrained(weights / "mochi-1-preview" / "vae").eval()
    with torch.no_grad():
        posterior = vae.encode(frames).latent_dist
    latent = torch.load(f"{name}.latent.pt", weights_only=True)
    torch.testing.assert_close(latent["mean"], posterior.mean)
    torch.testing.assert_close(latent["logvar"], posterior.logvar)

    tokenizer, text_encoder = load_t5(weights / "mochi-1-preview", "cpu")
    for suffix, text in ((".embed_.pt", "a robot dancing"), (".embed.pt", "a dance video")):
        feat, mask = t5_embed(tokenizer, text_encoder, text, "cpu")
        embed = torch.load(f"{name}{suffix}", weights_only=True)
        assert torch.equal(embed["y_feat"][0], feat) and torch.equal(embed["y_mask"][0], mask)

    wave = wave_16k(Path(f"{name}.mp4"), probe(f"{name}.mp4").audio, 0.5, 0)
    assert len(wave) == 8000
    encoder = Wav2VecEncoder.from_folder(weights / "wav2vec2-base-960h")
    assert torch.equal(torch.load(f"{name}.audio_wav2vec.pt", weights_only=True)["audio_embeddings"], encoder(wave))


def test_bad_videos_are_rejected_with_their_reasons_and_the_run_goes_on(first_run, videos):
    _, summary = first_run
    reasons = {rejection.path.name: rejection.reason for rejection in summary.rejected}
    assert set(reasons) == {"silent.mp4", "corrupt.mp4", "short.mp4"}
    assert reasons["silent.mp4"] == "no audio track"
    assert "not a readable" in reasons["corrupt.mp4"]
    assert reasons["short.mp4"].startswith("too short for one clip")
    assert summary.to_dict()["rejected"] == 3 and summary.to_dict()["rejections"][0]["reason"]


def test_a_rerun_skips_everything_and_redoes_a_cut_off_file(first_run, videos, weights):
    out, _ = first_run
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    again = preprocess_dance(videos, out, OPTIONS, weights, quiet=True)
    assert again.written == [] and sorted(p.name for p in again.skipped) == [f"{name}.mp4" for name in CLIPS]
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before

    latent_file = out / "beta.seg0.latent.pt"
    whole = latent_file.read_bytes()
    latent_file.write_bytes(whole[: len(whole) // 2])  # a write killed half-way (not through our atomic writes)
    redone = preprocess_dance(videos, out, OPTIONS, weights, quiet=True)
    assert [p.name for p in redone.written] == ["beta.seg0.mp4"] and len(redone.skipped) == 3
    assert torch.equal(torch.load(latent_file, weights_only=True)["mean"],
                       torch.load(io.BytesIO(whole), weights_only=True)["mean"])
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary left behind

    video_file, latent_file = out / "alpha.seg1.mp4", out / "alpha.seg1.latent.pt"
    video_file.write_bytes(video_file.read_bytes()[:2000])
    latent_mtime = latent_file.stat().st_mtime_ns
    recut = preprocess_dance(videos, out, OPTIONS, weights, quiet=True)
    assert [p.name for p in recut.written] == ["alpha.seg1.mp4"] and probe(video_file).video.num_frames == 15
    assert latent_file.stat().st_mtime_ns != latent_mtime  # the features of a re-cut clip are redone


def test_aist_crop_rule_and_its_generalisation():
    assert crop_window((1920, 1080), (848, 480)) == CropWindow(324, 270, 1272, 720)  # upstream's AIST window
    portrait = crop_window((1080, 1920), (848, 480))
    assert portrait.width == 1080 and portrait.x == 0 and portrait.y + portrait.height <= 1920
    assert abs(portrait.width / portrait.height - 848 / 480) < 0.01
    small = crop_window((160, 120), (48, 32))
    assert small.y + small.height <= 120 and small.x + small.width <= 160


def test_segments_are_seeded_and_keep_away_from_the_ends():
    options = DancePreprocessOptions(num_frames=73, clips_per_minute=5)
    starts = segment_starts(150.0, 2.5, options, random.Random(7))
    assert len(starts) == math.ceil(2.5 * 5) == 13
    assert all(7.5 <= start <= 150 - 7.5 - 2.5 for start in starts)
    assert starts == segment_starts(150.0, 2.5, options, random.Random(7))
    center = DancePreprocessOptions(num_frames=73, crop="center")
    assert segment_starts(150.0, 2.5, center, random.Random(7)) == [73.75]
    assert clip_seconds(73) == 2.5 and clip_seconds(145) == 4.9  # upstream's printf "%.1f" of n/30 + 0.09


def test_bad_options_and_missing_weights_fail_before_anything_loads(videos, tmp_path):
    code = ("import sys; from pathlib import Path\n"
            "from avtool.pipelines.preprocess import DancePreprocessOptions, preprocess_dance\n"
            "from avtool.errors import BadInput\n"
            "try:\n"
            f"    preprocess_dance(Path({str(videos)!r}), Path({str(tmp_path / 'o')!r}), DancePreprocessOptions(num_frames=70), Path('nowhere'))\n"
            "except BadInput as error:\n"
            "    print(error.message, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.startswith("--num-frames 70") and result.stdout.strip().endswith("False")
    with pytest.raises(WeightsError, match="missing weights|no such weights folder"):
        preprocess_dance(videos, tmp_path / "o", OPTIONS, tmp_path / "nowhere")
    with pytest.raises(BadInput, match="no video files"):
        preprocess_dance(tmp_path, tmp_path / "o", OPTIONS, tmp_path / "nowhere")
    with pytest.raises(BadInput, match="--crop"):
        preprocess_dance(videos, tmp_path / "o", DancePreprocessOptions(crop="edge"), tmp_path / "nowhere")


def test_bash_script_refuses_bad_flags_with_its_usage():
    result = subprocess.run(["bash", str(REPO / "bash" / "preprocess.bash"), "-x"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr and "-v VIDEOS_DIR" in result.stderr


def test_the_cli_prints_the_summary_and_refuses_a_folder_without_any_clip(weights, tmp_path):
    import json

    from conftest import run_avtool

    videos = tmp_path / "videos"
    videos.mkdir()
    clip(videos / "one.mp4", seconds=2, fps=30, size="160x120")
    run = run_avtool("preprocess", "dance", videos, "-o", tmp_path / "out", "--num-frames", "13", "--weights-dir", weights,
                     "--crop", "center", "--json", "-q")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["written"] == 1 and summary["rejected"] == 0 and (tmp_path / "out" / "one.seg0.latent.pt").is_file()
    (tmp_path / "silent").mkdir()
    clip(tmp_path / "silent" / "mute.mp4", seconds=2, fps=30, size="160x120", audio=False)
    run = run_avtool("preprocess", "dance", tmp_path / "silent", "-o", tmp_path / "out2", "--weights-dir", weights)
    assert run.returncode == 2 and "no audio track" in run.stderr and "no video gave a clip" in run.stderr, run.stderr
