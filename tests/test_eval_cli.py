"""`avtool eval` end to end: JSON rows and mean, plots, BAS from joints, and every bad input."""

import json

import numpy as np
import pytest
from evalgen import CLICKS, FPS, SR, burst_frames, click_track, lossless_video, write_wav
from mediagen import clip, ffmpeg, tone

from avtool.analysis.av_align import audio_onsets, av_align
from avtool.analysis.bas import bas_bailando, bas_fact, joint_envelope, joint_speed, music_beats, music_sample_rate
from avtool.analysis.motion import motion_curve
from avtool.media import load_audio


def strict_json(text: str) -> dict:
    def no_nan(name):
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=no_nan)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalcli")
    clicks = write_wav(folder / "clicks.wav", click_track(CLICKS, 3.0))
    silence = write_wav(folder / "silence.wav", np.zeros(3 * SR, np.float32))
    still = np.repeat(burst_frames()[:1], len(burst_frames()), axis=0)
    return {
        "bursts": lossless_video(folder / "bursts.mp4", burst_frames(), FPS),
        "clicks": clicks,
        "with_audio": lossless_video(folder / "with_audio.mp4", burst_frames(), FPS, audio=clicks),
        "silent_moving": lossless_video(folder / "silent_moving.mp4", burst_frames(), FPS, audio=silence),
        "still_silent": lossless_video(folder / "still_silent.mp4", still, FPS, audio=silence),
        "no_audio": clip(folder / "no_audio.mp4", seconds=1.0, audio=False),
        "audio_only": tone(folder / "audio_only.wav", seconds=1.0),
        "folder": folder,
    }


def test_all_metrics_with_plot_match_the_hand_counts(avtool, media, tmp_path):
    out = tmp_path / "plots" / "bursts.png"
    result = avtool("eval", media["bursts"], "--audio", media["clicks"], "--reference-audio", media["clicks"],
                    "--metric", "all", "--plot", out, "--json")
    assert result.returncode == 0, result.stderr
    report = strict_json(result.stdout)
    (row,) = report["files"]
    scores = row["scores"]
    assert scores["av-align"] == pytest.approx(3 / 7) and scores["av-align-2023"] == pytest.approx(5 / 7)
    assert row["details"]["av-align"] == {"audio_peaks": 6, "video_peaks": 4, "matches": 3}
    assert row["details"]["av-align-2023"] == {"audio_peaks": 6, "video_peaks": 6, "matches": 5}
    assert scores["beat-coverage"] == 1.0 and scores["beat-hit"] == 1.0  # the audio against itself
    assert scores["beat-coverage-d2m"] == 1.0
    assert {"bas-flow-bailando", "bas-flow-fact", "beat-hit-d2m"} <= set(scores)
    assert report["mean"] == scores and row["fps"] == FPS and row["frames"] == 30
    assert row["plot"] == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sidecar = strict_json((out.parent / "bursts.png.json").read_text())
    assert sidecar["scores"] == scores and "eval" in sidecar["command"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["bursts.png", "bursts.png.json"]  # no temporary file left


def test_many_files_rows_mean_and_plot_per_file(avtool, media, tmp_path):
    pattern = media["folder"] / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24:duration=2", "-f", "lavfi",
           "-i", "aevalsrc=0.8*sin(2*PI*200*t)*exp(-20*mod(t\\,0.41)):s=44100:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-shortest", str(pattern))
    result = avtool("eval", media["with_audio"], pattern, "--plot", tmp_path / "p.png", "--json", "-q")
    assert result.returncode == 0, result.stderr
    report = strict_json(result.stdout)
    assert [row["file"] for row in report["files"]] == [str(media["with_audio"]), str(pattern)]
    values = [row["scores"]["av-align"] for row in report["files"]]
    assert list(report["mean"]) == ["av-align"] and report["scored"] == {"av-align": 2}
    assert report["mean"]["av-align"] == pytest.approx(sum(values) / 2)
    # the embedded AAC audio gives the number computed from the same decoded samples
    y, sr = load_audio(media["with_audio"], sr=SR)
    assert values[0] == pytest.approx(av_align(audio_onsets(y, sr), motion_curve(media["with_audio"])).score, abs=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_pattern.png", "p_pattern.png.json", "p_with_audio.png",
                                                          "p_with_audio.png.json"]

    table = avtool("eval", media["with_audio"], pattern, "--metric", "av-align-2023", "-q")
    assert table.returncode == 0, table.stderr
    assert "av-align-2023" in table.stdout and "mean of 2 files" in table.stdout


def test_silent_audio_and_still_video_give_defined_values(avtool, media):
    result = avtool("eval", media["silent_moving"], media["still_silent"], "--metric", "all", "--json")
    assert result.returncode == 0, result.stderr
    report = strict_json(result.stdout)
    moving, still = report["files"]
    assert moving["scores"]["av-align"] == 0.0  # 0 audio peaks, 4 video peaks: 0 / 4
    assert moving["details"]["av-align"] == {"audio_peaks": 0, "video_peaks": 4, "matches": 0}
    assert still["scores"]["av-align"] is None
    assert still["reasons"]["av-align"] == "no audio onsets and no video peaks"
    assert still["scores"]["bas-flow-fact"] is None and still["reasons"]["bas-flow-fact"] == "no music beats"
    assert report["mean"]["av-align"] == 0.0 and report["scored"]["av-align"] == 1


def test_bas_from_joints(avtool, media, tmp_path):
    fps = 30
    t = np.arange(150)[:, None, None]
    joints = np.sin(2 * np.pi * t / 30 + np.linspace(0, 0.2, 24)[None, :, None]) * np.ones((1, 24, 3))
    np.save(tmp_path / "dance.npy", joints)
    music = write_wav(tmp_path / "music.wav", click_track(np.arange(0.5, 5.0, 0.5), 5.0), SR)
    result = avtool("eval", music, "--joints", tmp_path / "dance.npy", "--motion-fps", fps, "--metric", "bas", "--json")
    assert result.returncode == 0, result.stderr
    scores = strict_json(result.stdout)["files"][0]["scores"]
    y, sr = load_audio(music, sr=music_sample_rate(fps))
    expected_bailando = bas_bailando(joint_speed(joints), music_beats(y, sr, fps, "bailando")).score
    expected_fact = bas_fact(joint_envelope(joints), music_beats(y, sr, fps, "fact"), fps).score
    assert scores == {"bas-bailando": pytest.approx(expected_bailando, abs=1e-12), "bas-fact": pytest.approx(expected_fact, abs=1e-12)}


@pytest.mark.parametrize("make_args,message", [
    (lambda m, t: [m["no_audio"]], "has no audio track; give --audio"),
    (lambda m, t: [m["audio_only"]], "has no video track"),
    (lambda m, t: [t / "one.mp4"], "has 1 frame; optical flow needs at least two"),
    (lambda m, t: [m["bursts"], m["with_audio"], "--audio", m["clicks"]], "--audio applies to one input file"),
    (lambda m, t: [m["with_audio"], "--metric", "fid"], "--metric fid: unknown metric"),
    (lambda m, t: [m["with_audio"], "--metric", "beat-hit"], "beat-hit: needs --reference-audio"),
    (lambda m, t: [t / "missing.mp4"], "no such file"),
    (lambda m, t: [m["with_audio"], "--plot", t / "x.jpg"], "must name a .png file"),
    (lambda m, t: [m["audio_only"], "--metric", "bas", "--joints", m["clicks"]], "not a numpy .npy array"),
    (lambda m, t: [m["with_audio"], "--reference-audio", m["no_audio"], "--metric", "beat-hit"], "has no audio track"),
], ids=["no-audio", "no-video", "one-frame", "audio-many", "metric", "no-reference", "missing", "plot-suffix",
        "joints", "reference-silent-track"])
def test_bad_inputs_exit_2_with_one_line(avtool, media, tmp_path, make_args, message):
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i", "sine=d=1", "-frames:v", "1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp_path / "one.mp4"))
    result = avtool("eval", *make_args(media, tmp_path), "--json")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*partial*"))


def test_many_files_one_bad_every_file_gets_its_row_and_the_exit_code_says_so(avtool, media, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    result = avtool("eval", media["with_audio"], broken, media["no_audio"], "--json")
    assert result.returncode == 2, result.stderr
    rows = strict_json(result.stdout)["files"]
    assert [("error" in row, row["scores"]["av-align"] is None) for row in rows] == [(False, False), (True, True), (True, True)]
    assert "not a readable audio/video file" in rows[1]["reasons"]["av-align"] and "has no audio track" in rows[2]["error"]
    alone = strict_json(avtool("eval", media["with_audio"], "--json").stdout)["files"][0]
    assert rows[0]["scores"] == alone["scores"]  # the good file's score is what it is on its own
    assert "2 of 3 files failed" in result.stderr and "Traceback" not in result.stderr


def test_audio_and_video_of_different_lengths_are_scored_with_a_warning(avtool, media, tmp_path):
    short_audio = write_wav(tmp_path / "short.wav", click_track(np.array([0.2, 0.6]), 1.0))
    result = avtool("eval", media["bursts"], "--audio", short_audio, "--json")
    assert result.returncode == 0, result.stderr
    [row] = strict_json(result.stdout)["files"]
    assert len(row["warnings"]) == 1 and "the audio lasts 1.00 s and the video 3.00 s" in row["warnings"][0]
    assert "warning:" in result.stderr
    assert strict_json(avtool("eval", media["with_audio"], "--json").stdout)["files"][0]["warnings"] == []


def test_an_unwritable_plot_fails_before_any_decoding(avtool, media, tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = avtool("eval", media["with_audio"], "--plot", tmp_path / "blocker" / "p.png")
    assert result.returncode == 2 and "blocker: cannot write files there" in result.stderr
    assert "--output-dir" not in result.stderr  # hints name only options that exist


@pytest.mark.parametrize("fps", ["inf", "1e300", "5e-324", "nan", "0"])
def test_motion_fps_out_of_range_exits_2(avtool, media, tmp_path, fps):
    np.save(tmp_path / "dance.npy", np.zeros((150, 24, 3)))
    result = avtool("eval", media["clicks"], "--joints", tmp_path / "dance.npy", "--metric", "bas", "--motion-fps", fps)
    assert result.returncode == 2 and "--motion-fps" in result.stderr and "Traceback" not in result.stderr
