"""`avtool score` (VidMuse) on tiny weights: windows, frames per window, outputs, bad inputs."""

import json
import subprocess

import numpy as np
import pytest
import soundfile
import torch
from conftest import run_avtool
from mediagen import ffmpeg

from avtool.media import VideoStreamInfo, frames_at, load_audio, probe
from avtool.media.ffmpeg import ffmpeg_exe
from avtool.pipelines import score as pipeline
from avtool.pipelines.common import GenerationOptions


@pytest.fixture(scope="session")
def vidmuse_weights(tiny_weights):
    return tiny_weights


def video(path, seconds: float, fps: int = 25, audio: bool = True):
    """A test pattern whose every frame differs (a running counter), with a tone unless `audio` is False."""
    sound = ["-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}"] if audio else []
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size=96x64:rate={fps}:duration={seconds}", *sound,
           "-c:v", "libx264", "-pix_fmt", "yuv420p", *(["-c:a", "aac"] if audio else []), str(path))
    return path


def stream_md5(path, stream: str) -> str:
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", f"0:{stream}:0", "-c", "copy", "-f", "md5", "-"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_windows_follow_upstreams_stride_and_prompt():
    assert pipeline.plan_windows(1500, 50) == [pipeline.Window(0, 1500, 0)]
    seventy = pipeline.plan_windows(3500, 50)  # 70 s: 0-30 s, 29.5-59.5 s, 59-70 s, each after the first with 0.5 s of prompt
    assert seventy == [pipeline.Window(0, 1500, 0), pipeline.Window(1475, 1500, 25), pipeline.Window(2950, 550, 25)]
    new = sum(w.frames - w.prompt for w in seventy)
    assert new == 3500 and seventy[-1].start + seventy[-1].frames == 3500
    assert pipeline.plan_windows(1476 + 25, 50)[-1] == pipeline.Window(1475, 26, 25)


def test_each_window_is_conditioned_on_the_frames_of_its_own_span():
    video = VideoStreamInfo(fps=25.0, num_frames=1750, width=96, height=64)  # 70 s at 25 fps
    windows = pipeline.plan_windows(3500, 50)
    spans = [pipeline.local_indices(w, 50, 2, video) for w in windows]
    assert [len(s) for s in spans] == [60, 60, 22]
    interval = 13  # upstream: ceil(25 / 2), so ~1.92 local frames per second
    assert spans[0][0] == 0 and spans[1][0] == 59 * interval and spans[2][0] == 118 * interval
    # the last window covers 59-70 s of audio with the frames of 59-70 s (upstream took the last 30 s' first frames)
    assert spans[2][-1] == min(139 * interval, 1749)
    assert np.array_equal(pipeline.global_indices(1750), np.linspace(0, 1749, 32).astype(int))


def test_bad_option_values_are_refused_before_loading(tmp_path):
    clip = video(tmp_path / "clip.mp4", 2)
    for args, message in ((["--top-k", "5000"], "--top-k 5000"), (["--top-p", "1.5"], "--top-p 1.5"),
                          (["--temperature", "nan"], "--temperature nan"), (["--duration", "0.5"], "--duration 0.5: must be from 1"),
                          (["--duration", "9"], "lasts only 2.00 s"), (["--model", "d2m"], "not a motion file (.pkl, .npy)"), (["--model", "D2M"], "expected one of vidmuse, d2m"),
                          (["--steps", "10"], "has no steps")):
        run = run_avtool("score", clip, "--weights-dir", tmp_path / "none", *args)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)


def test_bad_inputs_exit_2_and_write_nothing(vidmuse_weights, tmp_path):
    out = tmp_path / "out"
    short = video(tmp_path / "short.mp4", 0.3)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=2", str(tmp_path / "song.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=2", "-c:a", "aac", str(tmp_path / "audio_only.mp4"))
    (tmp_path / "empty_folder").mkdir()
    for path, message in ((short, "the video lasts 0.3"), (tmp_path / "song.wav", "has no video track"),
                          (tmp_path / "audio_only.mp4", "has no video track"), (tmp_path / "empty_folder", "no video")):
        run = run_avtool("score", path, "--weights-dir", vidmuse_weights, "--output-dir", out)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not out.exists()
    run = run_avtool("score", tmp_path / "song.wav", "--weights-dir", tmp_path / "none")
    assert run.returncode == 2  # the input is refused before the weights are looked at


def test_score_writes_the_music_and_the_video_with_it(vidmuse_weights, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    clip = video(folder / "clip.mp4", 3.4)
    out = tmp_path / "out"
    run = run_avtool("score", folder, "--weights-dir", vidmuse_weights, "--seed", "7", "--output-dir", out, "--json")
    assert run.returncode == 0, run.stderr
    [result] = [json.loads(line) for line in run.stdout.splitlines()]
    assert result["output"] == str(out / "clip_scored.mp4") and result["windows"] == 1 and result["music_seconds"] == 3
    music, rate = soundfile.read(out / "clip_scored.wav", dtype="float32")
    assert rate == 32000 and len(music) == 3 * 32000 and np.abs(music).max() > 0.01
    scored = probe(out / "clip_scored.mp4")
    assert stream_md5(out / "clip_scored.mp4", "v") == stream_md5(clip, "v")  # the video stream, bit for bit
    assert scored.audio.duration == pytest.approx(scored.video.duration, abs=0.05)  # music, then silence to the end
    muxed, _ = load_audio(out / "clip_scored.mp4", sr=32000)
    assert np.abs(muxed[: 2 * 32000]).max() > 0.01 and np.abs(muxed[int(3.1 * 32000):]).max() < 1e-3
    sidecar = json.loads((out / "clip_scored.mp4.json").read_text())
    assert sidecar["seed"] == 7 and sidecar["subcommand"] == "score" and sidecar["wav"] == str(out / "clip_scored.wav")


def test_long_video_in_windows_each_conditioned_on_its_span(vidmuse_weights, tmp_path, monkeypatch):
    """Windows of 2 s every 1.5 s (the real ones are 30 s every 29.5 s) over a 5 s video: 3 windows."""
    monkeypatch.setattr(pipeline, "MAX_DURATION", 2.0)
    monkeypatch.setattr(pipeline, "EXTEND_STRIDE", 1.5)
    long = video(tmp_path / "long.mp4", 5, audio=False)
    seen = []
    from avtool.models.vidmuse import VidMuse

    real = VidMuse.cfg_conditioning
    monkeypatch.setattr(VidMuse, "cfg_conditioning", lambda self, local, global_: seen.append(local.clone()) or real(self, local, global_))
    opts = GenerationOptions(output_dir=tmp_path / "out", seeds=[3], weights_dir=vidmuse_weights, quiet=True)
    [result] = list(pipeline.score([long], pipeline.ScoreRequest(), opts))
    assert result["windows"] == 3 and result["music_seconds"] == 5
    music, _ = soundfile.read(result["wav"])
    assert len(music) == 5 * 32000
    info = probe(long).require_video()
    for window, local in zip(pipeline.plan_windows(250, 50), seen, strict=True):
        indices = pipeline.local_indices(window, 50, 2, info)
        expected = np.concatenate(list(frames_at(long, indices, (64, 64))))
        assert np.array_equal(local[0].permute(0, 2, 3, 1).numpy(), expected)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1])


def test_a_seed_repeats_the_music_bit_for_bit_and_another_changes_it(vidmuse_weights, tmp_path):
    clip = video(tmp_path / "clip.mp4", 1.5, audio=False)
    music = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        opts = GenerationOptions(output_dir=tmp_path / name, seeds=[seed], weights_dir=vidmuse_weights, quiet=True)
        [result] = list(pipeline.score([clip], pipeline.ScoreRequest(duration=1.0), opts))
        music[name] = open(result["wav"], "rb").read()
    assert music["a"] == music["b"] != music["c"]


@pytest.mark.slow
def test_seventy_seconds_get_seventy_seconds_of_music_in_three_windows(vidmuse_weights, tmp_path):
    long = video(tmp_path / "long.mp4", 70, audio=False)
    run = run_avtool("score", long, "--weights-dir", vidmuse_weights, "--seed", "1", "--output-dir", tmp_path, "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["windows"] == 3 and len(soundfile.read(result["wav"])[0]) == 70 * 32000
    assert stream_md5(result["output"], "v") == stream_md5(long, "v")
