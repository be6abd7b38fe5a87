"""Beat coverage and beat hit: how the rhythm of generated music covers that of a reference recording.

Two implementations are published and their numbers are not comparable, so each has its own names.

`beat-coverage`, `beat-hit` (L-YeZhu/Beats_Scores `beats_scores.py`, the D2M-GAN / CDCD code):
- both audios loaded as `librosa.load` does (22 050 Hz mono);
- onsets = `onset_detect(y, sr, wait=1, delta=0.2, pre_avg=1, post_avg=1, post_max=1, units='time')`, pre_max at its
  default (1 frame at 22 050 Hz / hop 512);
- each audio becomes ceil(len(y)/sr) one-second bins, bin int(trunc(t)) set for every onset t;
- B_t = reference bins with an onset, B_g = generated bins with one, B_a = bins where both have one;
  coverage = B_g / B_t (can exceed 1), hit = B_a / B_t.
- The reference asserts that both audios have the same number of bins. We compare the first
  min(n_generated, n_reference) bins instead (identical when the counts agree) and report both counts.

`beat-coverage-d2m`, `beat-hit-d2m` (Dance2Music-Diffusion `evaluate/beat coverage scores.py`):
- beats = `librosa.beat.beat_track(y=y[0:131073], sr=22050)` (hop 512), for both audios, i.e. only the first
  131 073 samples (about 5.94 s) count;
- bg = number of generated beats, bt = number of reference beats;
- ba = number of *pairs* (b1, b2) with b1 a beat of the whole generated audio (not truncated: the reference calls
  beat_track again on the full signal here) and b2 a beat of the truncated reference, with |b1 - b2| <= 5 frames
  (about 116 ms; the code comment says seconds). A beat can be counted in several pairs, so hit can exceed 1.
- coverage = bg / bt, hit = ba / bt.
- Not kept: the script picks the generated file at random among the first 20 of a folder; we score the given pair.

Both: with no onsets (beats) in the reference audio the ratios divide by zero; the scores are then None with the
reason "no onsets in the reference audio" ("no beats ..." for d2m).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUDIO_SR = 22050
D2M_SAMPLES = 131073  # the D2M script scores only y[0:131073]
D2M_TOLERANCE = 5  # beat frames (hop 512 at 22 050 Hz)


@dataclass(frozen=True)
class BeatScores:
    """Coverage and hit (None when undefined, see `reason`) and the counts they come from."""

    coverage: float | None
    hit: float | None
    generated: int  # B_g / bg
    reference: int  # B_t / bt
    aligned: int  # B_a / ba
    reason: str | None = None


def onset_bins(y: np.ndarray, sr: int = AUDIO_SR) -> np.ndarray:
    """One boolean per started second of `y`: does an onset (Beats_Scores' detector settings) fall in it."""
    import librosa

    onsets = librosa.onset.onset_detect(y=y, sr=sr, wait=1, delta=0.2, pre_avg=1, post_avg=1, post_max=1, units="time")
    bins = np.zeros(int(np.ceil(len(y) / sr)), dtype=bool)
    bins[np.trunc(onsets).astype(int)] = True
    return bins


def beat_coverage_hit(generated: np.ndarray, reference: np.ndarray, sr: int = AUDIO_SR) -> BeatScores:
    """Beats_Scores' coverage and hit of mono `generated` against mono `reference` (both at `sr`)."""
    gen_bins, ref_bins = onset_bins(generated, sr), onset_bins(reference, sr)
    n = min(len(gen_bins), len(ref_bins))
    gen_bins, ref_bins = gen_bins[:n], ref_bins[:n]
    b_g, b_t, b_a = int(gen_bins.sum()), int(ref_bins.sum()), int((gen_bins & ref_bins).sum())
    if b_t == 0:
        return BeatScores(None, None, b_g, b_t, b_a, reason="no onsets in the reference audio")
    return BeatScores(b_g / b_t, b_a / b_t, b_g, b_t, b_a)


def beat_frames(y: np.ndarray, sr: int = AUDIO_SR) -> np.ndarray:
    """`librosa.beat.beat_track(y=y, sr=sr)` beat frames (hop 512) with its defaults."""
    import librosa

    return librosa.beat.beat_track(y=y, sr=sr)[1]


def beat_coverage_hit_d2m(generated: np.ndarray, reference: np.ndarray, sr: int = AUDIO_SR) -> BeatScores:
    """Dance2Music-Diffusion's beat coverage and hit of mono `generated` against mono `reference` (both at `sr`)."""
    gen_beats = beat_frames(generated[:D2M_SAMPLES], sr)
    ref_beats = beat_frames(reference[:D2M_SAMPLES], sr)
    gen_beats_full = gen_beats if len(generated) <= D2M_SAMPLES else beat_frames(generated, sr)
    distances = np.abs(gen_beats_full[:, None].astype(np.int64) - ref_beats[None, :].astype(np.int64))
    bg, bt, ba = len(gen_beats), len(ref_beats), int((distances <= D2M_TOLERANCE).sum())
    if bt == 0:
        return BeatScores(None, None, bg, bt, ba, reason="no beats in the first 131073 samples of the reference audio")
    return BeatScores(bg / bt, ba / bt, bg, bt, ba)
