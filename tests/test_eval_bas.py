"""Beat Alignment Score: both directions by hand, and equality with the Bailando and mint (FACT) code."""

import numpy as np
import pytest
from evalgen import click_track

from avtool.analysis.bas import (
    bas_bailando,
    bas_fact,
    flow_envelope,
    flow_speed,
    joint_envelope,
    joint_speed,
    music_beats,
    music_sample_rate,
)


def reference_bailando(keypoints: np.ndarray, music_beats: np.ndarray) -> float:
    """lisiyao21/Bailando utils/beat_align_score.py: calc_db + BA (music beats already truncated to the length)."""
    from scipy.ndimage import gaussian_filter as G
    from scipy.signal import argrelextrema

    keypoints = np.array(keypoints).reshape(-1, 24, 3)
    kinetic_vel = np.mean(np.sqrt(np.sum((keypoints[1:] - keypoints[:-1]) ** 2, axis=2)), axis=1)
    kinetic_vel = G(kinetic_vel, 5)
    motion_beats = argrelextrema(kinetic_vel, np.less)
    ba = 0
    for bb in music_beats:
        ba += np.exp(-np.min((motion_beats[0] - bb) ** 2) / 2 / 9)
    return ba / len(music_beats)


def reference_fact(joints: np.ndarray, music_beats_onehot: np.ndarray) -> float:
    """google-research/mint tools/calculate_beat_scores.py: motion_peak_onehot + alignment_score(sigma=3)."""
    import scipy.signal as scisignal

    velocity = np.zeros_like(joints, dtype=np.float32)
    velocity[1:] = joints[1:] - joints[:-1]
    envelope = np.sum(np.linalg.norm(velocity, axis=2), axis=1)
    peak_idxs = scisignal.argrelextrema(envelope, np.less, axis=0, order=10)
    motion_beats = np.zeros_like(envelope, dtype=bool)
    motion_beats[peak_idxs] = 1
    if motion_beats.sum() == 0:
        return 0.0
    music_beat_idxs = np.where(music_beats_onehot)[0]
    score_all = []
    for motion_beat_idx in np.where(motion_beats)[0]:
        dists = np.abs(music_beat_idxs - motion_beat_idx).astype(np.float32)
        ind = np.argmin(dists)
        score_all.append(np.exp(-dists[ind] ** 2 / 2 / 3**2))
    return sum(score_all) / len(score_all)


def test_directions_by_hand():
    t = np.arange(120)
    envelope = 1 - np.cos(2 * np.pi * (t - 30) / 60)  # minima at frames 30 and 90
    beats = np.array([33, 60, 90, 150])  # 150 is past the motion and dropped
    fact = bas_fact(envelope, beats, fps=60)
    assert fact.motion_beats.tolist() == [30, 90]
    # mean over motion beats: 30 -> 33 (3 frames), 90 -> 90
    assert fact.score == pytest.approx((np.exp(-9 / 18) + 1) / 2, abs=1e-6)

    bailando = bas_bailando(envelope[:119], beats)
    assert bailando.motion_beats.tolist() == [30, 90]
    # mean over music beats: 33 -> 30 (3), 60 -> 30 or 90 (30), 90 -> 90
    assert bailando.score == pytest.approx((np.exp(-9 / 18) + np.exp(-900 / 18) + 1) / 3, abs=1e-12)


def test_undefined_and_zero_cases():
    still = np.zeros(100)
    assert bas_fact(still, np.array([10, 40]), fps=60).score == 0.0  # no motion beats: mint returns 0
    assert bas_bailando(still[:99], np.array([10, 40])).score == 0.0
    moving = 1 - np.cos(np.arange(100) / 5)
    for result in (bas_fact(moving, np.array([], dtype=np.int64), fps=60), bas_bailando(moving[:99], np.array([200]))):
        assert result.score is None and result.reason == "no music beats"


def test_joints_equal_the_reference_code():
    rng = np.random.default_rng(7)
    frames = 240
    t = np.arange(frames)[:, None, None]
    # 24 joints swinging at 1.3 Hz with per-joint phases, plus noise: pauses twice per swing
    joints = np.sin(2 * np.pi * 1.3 * t / 60 + rng.uniform(0, 0.3, (1, 24, 1))) * rng.uniform(0.5, 1.0, (1, 24, 3))
    joints = (joints + rng.normal(0, 0.01, joints.shape)).astype(np.float32)
    beats = np.arange(7, frames, 29)

    ours = bas_bailando(joint_speed(joints), beats)
    assert len(ours.motion_beats) > 3
    assert ours.score == pytest.approx(reference_bailando(joints, beats[beats < frames - 1]), abs=1e-9)

    onehot = np.zeros(frames, bool)
    onehot[beats] = True
    ours = bas_fact(joint_envelope(joints), beats, fps=60)
    assert len(ours.motion_beats) > 3
    assert ours.score == pytest.approx(reference_fact(joints, onehot), abs=1e-6)


def test_flow_curve_maps_to_speed_and_envelope():
    curve = np.array([2.0, 2.0, 5.0, 1.0, 4.0])  # values[0] repeats flow(0->1)
    assert flow_speed(curve).tolist() == [2.0, 5.0, 1.0, 4.0]  # flow(t -> t+1), T-1 values
    assert flow_envelope(curve).tolist() == [0.0, 2.0, 5.0, 1.0, 4.0]  # 0, then flow(t-1 -> t), T values


def test_music_beats_land_on_the_clicks_in_motion_frames():
    fps = 30
    sr = music_sample_rate(fps)
    assert sr == 15360  # one hop of 512 per motion frame
    clicks = np.arange(0.5, 8.0, 0.5)  # 120 BPM: a beat every 15 frames
    y = click_track(clicks, 8.0, sr=sr)
    for direction in ("bailando", "fact"):
        beats = music_beats(y, sr, fps, direction)
        assert len(beats) >= 10
        click_frames = clicks * fps
        assert np.all(np.min(np.abs(beats[:, None] - click_frames[None, :]), axis=1) <= 1)
