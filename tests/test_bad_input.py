"""Bad input of every kind: exit 2, one line naming the file and the problem, no traceback, nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_avtool
from mediagen import clip, ffmpeg, tone

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
    with pytest.raises(BadInput, match="blocker: cannot write files there"):
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


def test_probe_reports_where_late_audio_really_starts_and_how_long_it_is(tmp_path):
    late = tmp_path / "late.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=10", "-itsoffset", "5", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=44100:duration=5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(late))
    audio = probe(late).require_audio()
    assert audio.start == pytest.approx(5.0, abs=0.05) and audio.duration == pytest.approx(5.0, abs=0.05)
    samples, rate = load_audio(late, start=audio.start + 1.0, duration=2.0)
    assert len(samples) == 2 * rate and np.abs(samples).max() > 0.1  # the window in the file's timeline is sound


def test_tiny_videos_images_and_files_without_streams(tmp_path):
    tiny = tmp_path / "tiny.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=8x6:rate=30:duration=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tiny))
    video = probe(tiny).require_video()
    assert (video.width, video.height, video.num_frames) == (8, 6, 30)
    image = tmp_path / "still.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1", str(image))
    subtitles = tmp_path / "words.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    for path, problem in ((image, "is an image, not an audio or video file"), (subtitles, "has no audio or video stream")):
        assert_one_line_error(run_avtool("probe", path), path, problem)


def test_a_written_file_without_its_streams_never_gets_its_name(tmp_path):
    """--fps 1e9 made ffmpeg write an mp4 with no streams; every written file is probed before it is renamed."""
    with pytest.raises(RuntimeError, match="without the expected streams|unreadable"):
        write_video(np.zeros((5, 16, 16, 3), np.uint8), 1e9, tmp_path / "fast.mp4", audio=np.zeros(1000, np.float32),
                    sample_rate=16000)
    assert list(tmp_path.iterdir()) == []


def test_probe_of_many_files_describes_every_one_and_fails_for_the_bad(tmp_path):
    good, other = tone(tmp_path / "good.wav", seconds=1.0), tone(tmp_path / "other.mp3", seconds=2.0)
    (tmp_path / "text.mp3").write_text("this is not audio\n" * 100)
    result = run_avtool("probe", good, tmp_path / "text.mp3", other, tmp_path / "missing.wav", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [("error" in row, Path(row["path"]).name) for row in rows] == [
        (False, "good.wav"), (True, "text.mp3"), (False, "other.mp3"), (True, "missing.wav")]
    assert rows[1]["exit_code"] == 2 and "not a readable audio/video file" in rows[1]["error"]
    assert result.returncode == 2 and "2 of 4 files failed" in result.stderr and "Traceback" not in result.stderr
