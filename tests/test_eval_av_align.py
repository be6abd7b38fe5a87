"""AV-Align: exact peaks, matches and scores on media with known events, and equality with the reference algorithm."""

import numpy as np
import pytest
from evalgen import (
    CLICKS,
    FPS,
    JUMPS,
    NUM_FRAMES,
    SR,
    TWITCHES,
    burst_frames,
    click_track,
    lossless_video,
    reference_av_align,
    write_wav,
)
from mediagen import ffmpeg

from avtool.analysis.av_align import AudioOnsets, audio_onsets, av_align, match_peaks, video_peaks
from avtool.analysis.motion import MotionCurve, motion_curve
from avtool.media import load_audio


@pytest.fixture(scope="module")
def bursts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bursts")
    return lossless_video(folder / "bursts.mp4", burst_frames(), FPS), write_wav(folder / "bursts.wav", click_track(CLICKS, 3.0))


@pytest.fixture(scope="module")
def natural(tmp_path_factory):
    """A moving test pattern with a stereo 44.1 kHz drum-like track (resampled and down-mixed on load)."""
    folder = tmp_path_factory.mktemp("natural")
    video, audio = folder / "pattern.mp4", folder / "pattern.wav"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=24:duration=4", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
    ffmpeg("-f", "lavfi", "-i", "aevalsrc=0.8*sin(2*PI*180*t)*exp(-18*mod(t\\,0.37)):s=44100:d=4", "-ac", "2", str(audio))
    return video, audio


def test_motion_curve_is_zero_except_at_the_bursts(bursts):
    curve = motion_curve(bursts[0])
    assert curve.fps == FPS and len(curve.values) == NUM_FRAMES
    assert curve.values[0] == curve.values[1]  # the reference repeats flow(0->1)
    moving = set(JUMPS) | set(TWITCHES)
    assert all(curve.values[i] == 0.0 for i in range(NUM_FRAMES) if i not in moving)
    assert all(curve.values[i] > 1.0 for i in JUMPS)
    assert all(0.0 < curve.values[i] < 0.1 for i in TWITCHES)
    assert video_peaks(curve.values, 0.1).tolist() == list(JUMPS)
    assert video_peaks(curve.values, None).tolist() == sorted(JUMPS + TWITCHES)


def test_av_align_peaks_matches_and_scores_by_hand(bursts):
    video, audio = bursts
    y, sr = load_audio(audio, sr=SR)
    onsets = audio_onsets(y, sr)
    # Each click's onset is the first hop-512 frame at or after it: ceil(sample / 512) * 512 / 22050.
    frames = [int(np.ceil(round(t * SR) / 512)) for t in CLICKS]
    assert np.allclose(onsets.times, np.array(frames) * 512 / SR)
    curve = motion_curve(video)

    current = av_align(onsets, curve, "av-align")
    # video peaks 0.5, 1.0, 1.7, 2.4 s; window +-0.1 s: clicks 0.5 and 1.0 match; 1.32 and 2.15 have no peak;
    # 2.35 matches the 2.4 s peak, which 2.44 then cannot reuse.  3 / (6 + 4 - 3)
    assert current.matches == [(0, 0), (1, 1), (4, 3)]
    assert current.score == pytest.approx(3 / 7, abs=1e-12)

    original = av_align(onsets, curve, "av-align-2023")
    # twitch peaks 1.3 and 2.0 s count too; 1.32 matches 1.3; 2.35 and 2.44 both match 2.4.  5 / (6 + 6 - 5)
    assert original.matches == [(0, 0), (1, 1), (2, 2), (4, 5), (5, 5)]
    assert original.score == pytest.approx(5 / 7, abs=1e-12)


@pytest.mark.parametrize("variant,version", [("av-align", "2025"), ("av-align-2023", "2023")])
@pytest.mark.parametrize("single_threaded", [True, False], ids=["opencv-1-thread", "opencv-default-threads"])
def test_equals_reference_implementation(natural, bursts, variant, version, single_threaded):
    import librosa

    for video, audio in (natural, bursts):
        y, sr = librosa.load(str(audio))  # exactly what the reference script does with X.wav
        ours_y, ours_sr = load_audio(audio, sr=SR)
        np.testing.assert_array_equal(ours_y, y)
        curve = motion_curve(video, workers=2)
        ours = av_align(audio_onsets(ours_y, ours_sr), curve, variant)

        expected, trajectory, peaks = reference_av_align(y, sr, video, version, single_threaded)
        np.testing.assert_allclose(curve.values, trajectory, rtol=1e-7, atol=1e-9)  # numpy vs cv2 reductions, see motion.py
        assert (ours.video_peaks / curve.fps).tolist() == peaks
        assert ours.score == pytest.approx(expected, abs=1e-12)


def test_embedded_audio_equals_reference_on_the_same_decoded_samples(tmp_path):
    video = lossless_video(tmp_path / "with_audio.mp4", burst_frames(), FPS,
                           audio=write_wav(tmp_path / "clicks.wav", click_track(CLICKS, 3.0)))
    y, sr = load_audio(video, sr=SR)
    expected, _, _ = reference_av_align(y, sr, video, "2025")
    assert av_align(audio_onsets(y, sr), motion_curve(video), "av-align").score == pytest.approx(expected, abs=1e-6)


def test_threads_give_the_sequential_curve(natural):
    one, three = motion_curve(natural[0], workers=1), motion_curve(natural[0], workers=3)
    np.testing.assert_array_equal(one.values, three.values)


def test_matching_window_is_open_and_2023_can_exceed_one():
    fps = 10.0
    # 0.6 is exactly one frame after the peak at 0.5: outside the open window (float64 as the reference evaluates it)
    assert match_peaks(np.array([0.6]), np.array([0.5]), fps, one_to_one=True) == []
    assert match_peaks(np.array([0.45, 0.55]), np.array([0.5]), fps, one_to_one=True) == [(0, 0)]
    assert match_peaks(np.array([0.45, 0.55]), np.array([0.5]), fps, one_to_one=False) == [(0, 0), (1, 0)]
    # earlier unused peak is taken first, in time order
    assert match_peaks(np.array([0.52, 0.55]), np.array([0.48, 0.58]), fps, one_to_one=True) == [(0, 0), (1, 1)]

    curve = MotionCurve(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0]), fps)  # one peak at frame 5 = 0.5 s
    onsets = AudioOnsets(np.zeros(1), np.array([0.45, 0.55]))
    assert av_align(onsets, curve, "av-align").score == pytest.approx(1 / 2)  # 1 / (2 + 1 - 1)
    assert av_align(onsets, curve, "av-align-2023").score == pytest.approx(2.0)  # 2 / (2 + 1 - 2)


def test_no_peaks_on_either_side_is_undefined_not_nan():
    still = MotionCurve(np.zeros(10), 10.0)
    silent = AudioOnsets(np.zeros(5), np.array([]))
    result = av_align(silent, still, "av-align")
    assert result.score is None and "no audio onsets and no video peaks" in result.reason
    assert av_align(AudioOnsets(np.zeros(5), np.array([0.3])), still, "av-align").score == 0.0
