"""Bad input of every kind: exit 2, one line naming the file and the problem, no traceback, nothing written."""

import json

import numpy as np
import pytest
from conftest import run_avtool
from mediagen import clip, tone

from avtool.errors import BadInput
from avtool.media import load_audio, probe, read_frames, write_video


def bad_files(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("this is not audio\n" * 100)
    good = clip(tmp_path / "good.mp4", seconds=2.0)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {
        "missing.mp3": "no such file",
        "folder.mp4": "is a directory",
        "empty.mp3": "file is empty",
        "text.mp3": "not a readable audio/video file",
        "truncated.mp4": "not a readable audio/video file",
    }


def assert_one_line_error(result, path, problem):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and str(path) in first and problem in first


def test_unreadable_inputs_through_the_cli(tmp_path):
    for name, problem in bad_files(tmp_path).items():
        assert_one_line_error(run_avtool("probe", tmp_path / name), tmp_path / name, problem)


def test_missing_track_through_the_cli(tmp_path):
    silent_video = clip(tmp_path / "silent.mp4", audio=False)
    song = tone(tmp_path / "song.wav")
    assert_one_line_error(run_avtool("probe", "--require", "audio", silent_video), silent_video, "has no audio track")
    assert_one_line_error(run_avtool("probe", "--require", "video", song), song, "has no video track")


def test_unreadable_inputs_through_the_library(tmp_path):
    for name, problem in bad_files(tmp_path).items():
        with pytest.raises(BadInput, match=problem):
            load_audio(tmp_path / name)
        with pytest.raises(BadInput, match=problem):
            read_frames(tmp_path / name)
    with pytest.raises(BadInput, match="has no video track"):
        read_frames(tone(tmp_path / "song.mp3"))
    with pytest.raises(BadInput, match="has no stream"):
        load_audio(clip(tmp_path / "silent.mp4", audio=False))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(BadInput, match="cannot create output folder"):
        write_video([np.zeros((16, 16, 3), np.uint8)], 30, blocker / "out.mp4")
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.parametrize("name", ["file:other.wav", "concat:other.wav|other.wav", "pipe:1", "http:other.wav",
                                  "subfile,,start,0,end,100,,:other.wav"])
def test_file_names_that_look_like_ffmpeg_protocols_name_files(tmp_path, name):
    """ffmpeg would read `concat:a|b` as two files, `pipe:1` as stdout...: every path reaches it as file:/abs/path."""
    tone(tmp_path / "other.wav", seconds=3.0, freq=300)
    path = tone(tmp_path / "tone.wav", seconds=1.0, freq=1000)
    path = path.rename(tmp_path / name)
    result = run_avtool("probe", name, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert abs(json.loads(result.stdout)["audio"]["duration"] - 1.0) < 0.05
    samples, rate = load_audio(path)
    assert len(samples) == rate  # one second of the 1 kHz tone, not three of the other file
    assert np.abs(np.fft.rfft(samples)).argmax() == 1000
    write_video(np.zeros((3, 16, 16, 3), np.uint8), 10, tmp_path / f"out_{name}.mp4", audio=samples, sample_rate=rate)
    assert probe(tmp_path / f"out_{name}.mp4").video.num_frames == 3
