import numpy as np
import pytest
from mediagen import clip, ffmpeg, tone

from avtool.errors import BadInput
from avtool.media import iter_frames, load_audio, mux, probe, read_frames, write_video
from avtool.media.files import atomic_output


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def sine(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr).astype(np.float32)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg", ".m4a"])
def test_audio_formats_probe_and_decode(tmp_path, suffix):
    path = tone(tmp_path / f"tone{suffix}", seconds=2.0, sr=44100)
    info = probe(path)
    assert info.video is None
    assert info.audio.sample_rate == 44100 and info.audio.channels == 1
    assert info.audio.duration == pytest.approx(2.0, abs=0.06)
    samples, sr = load_audio(path)
    assert sr == 44100 and samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(2 * 44100, abs=0.06 * 44100)
    # lossy codecs shift samples by their priming delay: compare on the best alignment within 3000 samples
    reference = sine(2.0, 44100) / 8  # lavfi sine amplitude is 1/8
    best = max(correlation(samples[lag:], reference) for lag in range(0, 3000, 1))
    assert best > 0.99


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm"])
def test_video_containers_probe_frames_and_audio(tmp_path, suffix):
    path = clip(tmp_path / f"clip{suffix}", seconds=2.0, fps=25, size="96x64")
    info = probe(path)
    assert (info.video.width, info.video.height, info.video.fps) == (96, 64, 25)
    assert info.video.num_frames == 50
    assert info.audio is not None and info.audio.duration == pytest.approx(2.0, abs=0.06)
    frames = read_frames(path)
    assert frames.shape == (50, 64, 96, 3) and frames.dtype == np.uint8
    samples, sr = load_audio(path, sr=16000)
    assert sr == 16000 and len(samples) == pytest.approx(32000, abs=1000)


def test_window_decodes_the_same_samples_as_slicing(tmp_path):
    path = tone(tmp_path / "long.wav", seconds=6.0, freq=3.0)  # slow sine: any offset error shows in the values
    whole, sr = load_audio(path)
    window, _ = load_audio(path, start=2.5, duration=1.5)
    assert len(window) == int(1.5 * sr)
    np.testing.assert_allclose(window, whole[int(2.5 * sr) : int(4.0 * sr)], atol=1e-6)


def test_stereo_kept_or_averaged(tmp_path):
    path = tmp_path / "lr.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono",
           "-filter_complex", "[0:a][1:a]amerge=inputs=2", "-t", "1", str(path))
    stereo, sr = load_audio(path, mono=False)
    assert stereo.shape == (2, sr)
    assert np.abs(stereo[1]).max() == 0
    mono, _ = load_audio(path)
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-7)


def test_resampling_matches_librosa_load(tmp_path):
    import librosa

    path = tone(tmp_path / "t.wav", seconds=1.0, sr=44100)
    ours, sr = load_audio(path, sr=22050)
    theirs, _ = librosa.load(path, sr=22050)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_read_frames_resamples_by_nearest_timestamp(tmp_path):
    frames = (np.full((32, 48, 3), i * 8, np.uint8) for i in range(30))  # brightness encodes the frame index
    path = write_video(frames, 30, tmp_path / "ramp.mp4")
    out = read_frames(path, fps=10)
    assert out.shape[0] == 10
    indices = np.round(out.reshape(10, -1).mean(axis=1) / 8).astype(int)
    assert indices.tolist() == list(range(0, 30, 3))
    window = read_frames(path, fps=15, start=0.5, num_frames=4, size=(24, 16))
    assert window.shape == (4, 16, 24, 3)
    assert np.round(window.reshape(4, -1).mean(axis=1) / 8).astype(int).tolist() == [15, 17, 19, 21]


def test_iter_frames_batches(tmp_path):
    path = clip(tmp_path / "c.mp4", seconds=2.0, fps=30, audio=False)
    batches = list(iter_frames(path, batch_size=16))
    assert [len(b) for b in batches] == [16, 16, 16, 12]


def test_write_video_round_trip_with_audio_fitted(tmp_path):
    sr = 48000
    frames = (np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(45))
    long_audio = sine(3.0, sr)  # 3 s of audio for a 1.5 s video: trimmed
    out = write_video(frames, 30, tmp_path / "out.mp4", audio=long_audio, sample_rate=sr)
    info = probe(out)
    assert info.video.num_frames == 45 and info.video.fps == 30
    assert info.audio.sample_rate == sr and info.audio.duration == pytest.approx(1.5, abs=0.03)
    decoded, _ = load_audio(out)
    best = max(correlation(decoded[lag:], long_audio) for lag in range(0, 3000, 4))
    assert best > 0.99
    short = write_video([np.zeros((64, 96, 3), np.uint8)] * 60, 30, tmp_path / "short.mp4", audio=sine(0.5, sr), sample_rate=sr)
    assert probe(short).audio.duration == pytest.approx(2.0, abs=0.03)  # padded with silence


def test_write_video_accepts_batches_and_odd_sizes(tmp_path):
    batch = np.zeros((10, 33, 47, 3), np.uint8)
    info = probe(write_video([batch, batch], 24, tmp_path / "odd.mp4"))
    assert info.video.num_frames == 20
    assert (info.video.width, info.video.height) == (48, 34)


def test_write_video_failure_leaves_nothing(tmp_path):
    def frames():
        yield from [np.zeros((32, 32, 3), np.uint8)] * 5
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(frames(), 30, tmp_path / "x.mp4", audio=sine(1.0, 16000), sample_rate=16000)
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_removes_temp_on_error(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("fail")
    assert list((tmp_path / "sub").iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"


def test_mux_copies_video_and_trims_to_shorter(tmp_path):
    video = clip(tmp_path / "v.mp4", seconds=2.0, audio=False)
    audio = tone(tmp_path / "a.wav", seconds=5.0)
    out = mux(video, audio, tmp_path / "m.mp4")
    info = probe(out)
    assert info.video.num_frames == 60
    assert info.audio.duration == pytest.approx(2.0, abs=0.05)
    with pytest.raises(BadInput, match="has no audio track"):
        mux(video, video, tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()
