"""Beat coverage / hit (Beats_Scores and Dance2Music-Diffusion variants) on click tracks with known beats."""

import numpy as np
import pytest
from evalgen import SR, click_track

from avtool.analysis.beats import D2M_SAMPLES, beat_coverage_hit, beat_coverage_hit_d2m, onset_bins


def reference_beats_scores(ref: np.ndarray, syn: np.ndarray, sr: int = SR) -> tuple[float, float]:
    """L-YeZhu/Beats_Scores: onsets in 1-second bins; cover = B_g / B_t, hit = B_a / B_t."""
    import librosa

    def beat_detect(x):
        onsets = librosa.onset.onset_detect(y=x, sr=sr, wait=1, delta=0.2, pre_avg=1, post_avg=1, post_max=1, units="time")
        beats = [0] * int(np.ceil(len(x) / sr))
        for time in onsets:
            beats[int(np.trunc(time))] = 1
        return beats

    gt, gen = beat_detect(ref), beat_detect(syn)
    assert len(gt) == len(gen)
    hit = sum(1 for i in range(len(gt)) if gt[i] == 1 and gt[i] == gen[i])
    return sum(gen) / sum(gt), hit / sum(gt)


def reference_d2m(generated: np.ndarray, reference: np.ndarray, sr: int = SR) -> tuple[float, float]:
    """Dance2Music-Diffusion `beat coverage scores.py`: beat_track on y[0:131073]; aligned pairs within 5 frames."""
    import librosa

    _, generated_beats = librosa.beat.beat_track(y=generated[0:131073], sr=sr)
    _, gt_beats = librosa.beat.beat_track(y=reference[0:131073], sr=sr)
    _, beats1 = librosa.beat.beat_track(y=generated, sr=sr)
    _, beats2 = librosa.beat.beat_track(y=reference[0:131073], sr=sr)
    aligned = 0
    for beat1 in beats1:
        for beat2 in beats2:
            if abs(beat1 - beat2) <= 5:
                aligned += 1
    return len(generated_beats) / len(gt_beats), aligned / len(gt_beats)


def test_one_second_bins_by_hand():
    reference = click_track([0.3, 1.5, 2.2, 4.6], 5.0)  # bins 0, 1, 2, 4
    generated = click_track([1.2, 2.7, 3.4], 5.0)  # bins 1, 2, 3
    assert onset_bins(reference).tolist() == [True, True, True, False, True]
    scores = beat_coverage_hit(generated, reference)
    # B_t = 4, B_g = 3, B_a = 2 (bins 1 and 2)
    assert (scores.reference, scores.generated, scores.aligned) == (4, 3, 2)
    assert scores.coverage == 3 / 4 and scores.hit == 2 / 4
    assert (scores.coverage, scores.hit) == reference_beats_scores(reference, generated)


def test_different_lengths_compare_the_common_bins():
    reference = click_track([0.3, 1.5, 2.2, 4.6], 5.0)
    generated = click_track([1.2, 2.7], 3.0)  # bins 1, 2 of 3; the reference's first 3 bins are 0, 1, 2
    scores = beat_coverage_hit(generated, reference)
    assert (scores.reference, scores.generated, scores.aligned) == (3, 2, 2)


def test_silent_reference_is_undefined():
    scores = beat_coverage_hit(click_track([0.5], 2.0), np.zeros(2 * SR, np.float32))
    assert scores.coverage is None and scores.hit is None and "no onsets" in scores.reason


def test_d2m_identical_music_covers_and_hits_every_beat():
    music = click_track(np.arange(0.25, 5.0, 0.5), 5.0)  # 120 BPM; beats 21.5 frames apart, so only self-pairs align
    scores = beat_coverage_hit_d2m(music, music)
    assert scores.reference > 5
    assert scores.coverage == 1.0 and scores.hit == 1.0


def test_d2m_equals_reference_on_long_different_music():
    generated = click_track(np.arange(0.2, 9.0, 0.6), 9.0)  # 100 BPM, longer than the 131073 samples scored
    reference = click_track(np.arange(0.25, 9.0, 0.5), 9.0)  # 120 BPM
    assert len(generated) > D2M_SAMPLES
    scores = beat_coverage_hit_d2m(generated, reference)
    assert (scores.coverage, scores.hit) == pytest.approx(reference_d2m(generated, reference), abs=1e-12)
    assert scores.aligned > 0
