"""The picture to look at before trusting an AV-Align number: both curves, their peaks and the matched pairs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avtool.analysis.av_align import PEAK_THRESHOLD, AudioOnsets, AVAlign
from avtool.analysis.motion import MotionCurve
from avtool.media import atomic_output


def plot_alignment(path: str | os.PathLike, onsets: AudioOnsets, motion: MotionCurve, result: AVAlign, title: str) -> Path:
    """Write a PNG at `path` (atomically): onset envelope above, flow curve below, on one time axis.

    Audio onsets and video peaks are marked on their curves; each matched pair is joined by a green band across
    both panels, unmatched peaks are grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    audio_ax, video_ax = figure.subplots(2, 1, sharex=True)
    matched_audio = {a for a, _ in result.matches}
    matched_video = {v for _, v in result.matches}

    audio_ax.plot(onsets.envelope_times, onsets.envelope, color="tab:blue", linewidth=0.8, label="onset strength")
    onset_heights = np.interp(onsets.times, onsets.envelope_times, onsets.envelope) if len(onsets.envelope) else onsets.times
    _mark(audio_ax, onsets.times, onset_heights, matched_audio, "audio onsets")
    audio_ax.set_ylabel("onset strength")

    video_ax.plot(motion.times, motion.values, color="tab:orange", linewidth=0.8, label="mean optical flow")
    peak_times = result.video_peaks / motion.fps
    _mark(video_ax, peak_times, motion.values[result.video_peaks], matched_video, "video peaks")
    if result.variant == "av-align":
        video_ax.axhline(PEAK_THRESHOLD, color="grey", linestyle=":", linewidth=0.8, label=f"peak threshold {PEAK_THRESHOLD}")
    video_ax.set_ylabel("flow (px/frame)")
    video_ax.set_xlabel("time (s)")

    for a, v in result.matches:
        start, end = sorted((float(onsets.times[a]), float(peak_times[v])))
        for ax in (audio_ax, video_ax):
            ax.axvspan(start - 0.004, end + 0.004, color="tab:green", alpha=0.25, linewidth=0)

    score = "undefined" if result.score is None else f"{result.score:.4f}"
    figure.suptitle(f"{title}: {result.variant} = {score} ({len(result.matches)} matched; "
                    f"{len(onsets.times)} audio onsets, {len(result.video_peaks)} video peaks)")
    for ax in (audio_ax, video_ax):
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def _mark(ax, times: np.ndarray, heights: np.ndarray, matched: set[int], label: str) -> None:
    is_matched = np.array([i in matched for i in range(len(times))], dtype=bool)
    ax.scatter(times[is_matched], heights[is_matched], color="tab:green", marker="v", zorder=3, label=f"{label}, matched")
    ax.scatter(times[~is_matched], heights[~is_matched], color="grey", marker="v", zorder=3, label=f"{label}, unmatched")
