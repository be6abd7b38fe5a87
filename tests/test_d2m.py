"""Dance2Music-Diffusion end to end on tiny weights: `preprocess d2m` on generated AIST++-style motion and music,
`train configs/d2m.yaml` (resumable), `score --model d2m` (windows, the join, seeds, --video), the beat metrics on its
output, and every bad input refused before torch loads."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import REPO, run_avtool
from mediagen import clip
from test_cli import REJECT_CHILD

from avtool.models.d2m import SAMPLE_RATE, SAMPLES_PER_LATENT, WINDOW_LATENTS, WINDOW_SAMPLES
from avtool.pipelines.d2m import OVERLAP_LATENTS, join_windows, plan_windows
from avtool.pipelines.preprocess import D2MPreprocessOptions, preprocess_d2m
from avtool.weights.tiny.d2m import TINY_MOT, TINY_UNET

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DANCES = {"gBR_sBM_cAll_d04_mBR0_ch01": ("mBR0", 120.0), "gPO_sBM_cAll_d10_mPO1_ch02": ("mPO1", 90.0)}


def smpl_pickle(path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.write_bytes(pickle.dumps({"smpl_poses": rng.normal(0, 0.4, (frames, 72)), "smpl_trans": rng.normal(0, 40, (frames, 3)),
                                   "smpl_scaling": np.array([90.0]), "smpl_loss": 0.5}))


def click_track(path, bpm: float, seconds: float = 7.0, channels: int = 2) -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    since = t % (60 / bpm)
    song = 0.5 * np.sin(2 * np.pi * 880 * since) * np.exp(-since * 40) + 0.05 * np.sin(2 * np.pi * 220 * t)
    soundfile.write(path, np.stack([song] * channels, axis=1).astype(np.float32), SAMPLE_RATE)


@pytest.fixture(scope="module")
def aistpp(tmp_path_factory):
    """An AIST++-like folder: motions/*.pkl (400 frames) and music/m*.wav (7 s), paired by the music id."""
    root = tmp_path_factory.mktemp("aistpp")
    (root / "motions").mkdir()
    (root / "music").mkdir()
    for seed, (name, (music, bpm)) in enumerate(DANCES.items()):
        smpl_pickle(root / "motions" / f"{name}.pkl", 400, seed)
        click_track(root / "music" / f"{music}.wav", bpm, channels=2 - seed)  # one stereo, one mono
    return root


@pytest.fixture(scope="module")
def windows(aistpp, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("d2m_data")
    summary = preprocess_d2m(aistpp, out, D2MPreprocessOptions(), tiny_weights, quiet=True)
    assert len(summary.written) == 2 and not summary.rejected
    return out


def test_preprocess_writes_the_documented_windows_and_skips_them_on_a_rerun(aistpp, windows, tiny_weights):
    for name in DANCES:
        base = windows / "motions" / f"{name}.w0"
        motion = np.load(f"{base}.motion.npy")
        assert motion.shape == (356, 219) and motion.dtype == np.float32
        music, rate = soundfile.read(f"{base}.wav", always_2d=True)
        assert music.shape == (WINDOW_SAMPLES, 2) and rate == SAMPLE_RATE
        latent = torch.load(f"{base}.dmae.pt", weights_only=True)["latent"]
        assert latent.shape == (1, 32, WINDOW_LATENTS) and latent.abs().max() <= 1
    mono = soundfile.read(windows / "motions" / "gPO_sBM_cAll_d10_mPO1_ch02.w0.wav", always_2d=True)[0]
    np.testing.assert_array_equal(mono[:, 0], mono[:, 1])  # mono music is doubled
    again = preprocess_d2m(aistpp, windows, D2MPreprocessOptions(), tiny_weights, quiet=True)
    assert len(again.skipped) == 2 and not again.written


def test_preprocess_reports_bad_motion_and_missing_music_and_goes_on(tmp_path, tiny_weights):
    smpl_pickle(tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl", 400, 0)
    click_track(tmp_path / "mBR0.wav", 120)
    smpl_pickle(tmp_path / "gKR_sBM_cAll_d01_mKR2_ch01.pkl", 400, 1)  # no mKR2 anywhere
    smpl_pickle(tmp_path / "gHO_sBM_cAll_d20_mHO0_ch03.pkl", 100, 2)  # too short
    (tmp_path / "gLO_sBM_cAll_d13_mBR0_ch09.pkl").write_bytes(b"\x80\x04 not a pickle")
    summary = preprocess_d2m(tmp_path, tmp_path / "out", D2MPreprocessOptions(windows=3), tiny_weights, quiet=True)
    assert [p.name for p in summary.written] == ["gBR_sBM_cAll_d04_mBR0_ch01.w0.wav"]  # 7 s of music: one window
    reasons = {r.path.name: r.reason for r in summary.rejected}
    assert "mKR2" in reasons["gKR_sBM_cAll_d01_mKR2_ch01.pkl"]
    assert "fewer than one window of 356" in reasons["gHO_sBM_cAll_d20_mHO0_ch03.pkl"]
    assert "cannot read the motion pickle" in reasons["gLO_sBM_cAll_d13_mBR0_ch09.pkl"]


def test_the_preprocess_cli_summarises_and_refuses_video_options(aistpp, tiny_weights, tmp_path):
    out = run_avtool("preprocess", "d2m", aistpp, "-o", tmp_path / "out", "--weights-dir", tiny_weights, "--json", "-q")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["written"], summary["rejected"]) == (2, 0) and "height" not in summary
    refused = run_avtool("preprocess", "d2m", aistpp, "-o", tmp_path / "x", "--weights-dir", tiny_weights, "--dtype", "bf16")
    assert refused.returncode == 2 and "--dtype: not for `avtool preprocess d2m`" in refused.stderr
    assert not (tmp_path / "x").exists()


def config(path, data, run_dir, **keys) -> str:
    """configs/d2m.yaml with the tiny sizes, 4 steps of batch 2."""
    settings = {**yaml.safe_load((REPO / "configs" / "d2m.yaml").read_text()), "data": str(data), "checkpoint_dir": str(run_dir),
                "batch_size": 2, "num_steps": 4, "save_interval": 2, "seed": 3,
                "model": {"mot": TINY_MOT, "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET.items()}}, **keys}
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def trained_state(run_dir):
    return {name: torch.load(run_dir / name, weights_only=True) for name in ("dancecondation_test_final.pt", "MOT_final.pt")}


@pytest.fixture(scope="module")
def run_dir(windows, tiny_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("d2m_run")
    out = run_avtool("train", config(root / "d2m.yaml", windows, root / "run"), "--weights-dir", tiny_weights, "--json", "-q")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["step"] == 4
    return root / "run"


def test_training_resumed_after_a_stop_ends_where_an_uninterrupted_run_ends(windows, run_dir, tiny_weights, tmp_path):
    cfg = config(tmp_path / "d2m.yaml", windows, tmp_path / "run")
    first = run_avtool("train", cfg, "--weights-dir", tiny_weights, "--max-steps", "2", "-q")
    assert first.returncode == 0, first.stderr
    second = run_avtool("train", cfg, "--weights-dir", tiny_weights, "--resume", "--json", "-q")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["resumed_from"] == 2
    resumed, straight = trained_state(tmp_path / "run"), trained_state(run_dir)
    for name in straight:
        assert straight[name].keys() == resumed[name].keys()
        for key in straight[name]:
            torch.testing.assert_close(resumed[name][key], straight[name][key], rtol=0, atol=0)
    assert {key.split(".")[0] for key in straight["dancecondation_test_final.pt"]} == {"net", "diffusion", "sampler"}


def test_the_two_optimiser_groups_and_the_step_schedule_are_upstreams(windows, tiny_weights, tmp_path):
    from avtool.pipelines.train import read_config
    from avtool.training.d2m import D2MTask
    from avtool.training.schedule import step_decay

    _, cfg, _ = read_config(Path(config(tmp_path / "d2m.yaml", windows, tmp_path)))
    task = D2MTask(cfg, tiny_weights)
    unet, mot = task.optimizer_groups()
    assert (unet["lr"], unet["betas"], unet["weight_decay"], unet["eps"]) == (1e-4, (0.95, 0.99), 1e-3, 1e-6)
    assert (mot["lr"], mot["betas"]) == (1e-3, (0.5, 0.9))
    assert len(unet["params"]) + len(mot["params"]) == len(task.trainable_parameters())
    assert [step_decay(s, 10, 30, 0.5) for s in (0, 299, 300, 599, 600)] == [1, 1, 0.5, 0.5, 0.25]
    loss = task.loss(task.dataset()[:2], torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert all(p.grad is not None for p in task.mot.parameters() if p.requires_grad and p.dim() > 1)


def test_score_writes_music_of_the_motions_length_and_the_video_with_it(run_dir, tiny_weights, aistpp, tmp_path):
    motion = aistpp / "motions" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    video = clip(tmp_path / "dance.mp4", seconds=7.5)
    out = run_avtool("score", "--model", "d2m", motion, "--checkpoint", run_dir, "--weights-dir", tiny_weights, "--seed", "1",
                     "--steps", "3", "--decode-steps", "2", "--video", video, "--output-dir", tmp_path / "out", "--json", "-q")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    wav = tmp_path / "out" / "gBR_sBM_cAll_d04_mBR0_ch01_scored.wav"
    music, rate = soundfile.read(wav, always_2d=True)
    assert rate == SAMPLE_RATE and music.shape == (round(400 / 60 * SAMPLE_RATE), 2) and result["windows"] == 2
    assert result["video_with_music"].endswith("_scored.mp4") and (tmp_path / "out" / "gBR_sBM_cAll_d04_mBR0_ch01_scored.mp4.json").is_file()
    sidecar = json.loads((tmp_path / "out" / "gBR_sBM_cAll_d04_mBR0_ch01_scored.wav.json").read_text())
    assert sidecar["seed"] == 1 and sidecar["options"]["cfg_scale"] == 9.0

    again = run_avtool("score", "--model", "d2m", motion, "--checkpoint", run_dir, "--weights-dir", tiny_weights, "--seed", "1",
                       "--steps", "3", "--decode-steps", "2", "-o", tmp_path / "again.wav", "-q")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.wav").read_bytes() == wav.read_bytes()  # same seed, same bits

    reference = aistpp / "music" / "mBR0.wav"
    scores = run_avtool("eval", tmp_path / "out" / "gBR_sBM_cAll_d04_mBR0_ch01_scored.mp4", "--metric", "beat-coverage-d2m",
                        "--metric", "beat-hit-d2m", "--reference-audio", reference, "--json")
    assert scores.returncode == 0, scores.stderr
    (row,) = json.loads(scores.stdout)["files"]
    assert row["scores"]["beat-coverage-d2m"] >= 0 and row["scores"]["beat-hit-d2m"] >= 0


def test_windows_cover_the_music_and_follow_the_motion_in_time():
    single = plan_windows(WINDOW_LATENTS, 356, 356)
    assert [(w.start, w.motion_start, w.held) for w in single] == [(0, 0, 0)]
    total = 1500
    windows = plan_windows(total, 1100, 356)
    assert windows[0].start == 0 and windows[-1].start + WINDOW_LATENTS == total
    for previous, window in zip(windows, windows[1:], strict=False):
        assert window.held == previous.start + WINDOW_LATENTS - window.start >= OVERLAP_LATENTS
        assert window.motion_start == min(round(window.start * SAMPLES_PER_LATENT * 60 / SAMPLE_RATE), 1100 - 356)


def test_the_join_of_two_windows_has_no_step_beyond_the_music_own_variation():
    rng = np.random.default_rng(0)
    windows = plan_windows(WINDOW_LATENTS + 200, 800, 356)
    cut = windows[1].start * SAMPLES_PER_LATENT
    # two decodes of the shared latents that agree only roughly (here: opposite phase, and noise), as diffusion decodes
    pieces = [np.stack([0.4 * np.sin(2 * np.pi * 330 * (np.arange(WINDOW_SAMPLES) + w.start * SAMPLES_PER_LATENT) / SAMPLE_RATE + phase)
                        + 0.02 * rng.normal(size=WINDOW_SAMPLES)] * 2).astype(np.float32)
              for w, phase in zip(windows, (0.0, np.pi), strict=True)]
    music = join_windows(pieces, windows)
    own = np.abs(np.diff(pieces[0][0])).max()
    assert np.abs(np.diff(music[0])).max() <= own
    plain_cut = abs(pieces[0][0][cut - 1] - pieces[1][0][0])  # what laying the second window over the first would do
    assert plain_cut > own


@pytest.mark.parametrize(("args", "code", "message"), [
    (["{nan}"], 2, "NaN or infinite"),
    (["{short}"], 2, "fewer than one window of 356"),
    (["{evil}"], 2, "refused: it needs"),
    (["{good}", "--top-k", "5"], 2, "--top-k: only for --model vidmuse"),
    (["{good}", "--cfg-scale", "1e9"], 2, "--cfg-scale 1e+09"),
    (["{good}", "--decode-steps", "0"], 2, "--decode-steps 0"),
    (["{good}", "--duration", "60"], 2, "holds only 6.67 s of motion"),
    (["{good}", "{good2}", "--video", "{video}"], 2, "one dance's video"),
    (["{good}", "--checkpoint", "{tmp}"], 3, "no trained D2M there"),
    (["{good}", "--weights-dir", "{tmp}/none"], 3, "no trained D2M there"),
    (["{good}", "-o", "{tmp}/x.mp4"], 2, "this command writes .wav files"),
])
def test_bad_d2m_inputs_are_refused_before_torch_loads(tiny_weights, tmp_path, args, code, message):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "nan.npy", np.full((400, 219), np.nan, dtype=np.float32))
    np.save(tmp_path / "short.npy", rng.normal(size=(300, 219)).astype(np.float32))
    np.save(tmp_path / "good.npy", rng.normal(size=(400, 219)).astype(np.float32))
    np.save(tmp_path / "good2.npy", rng.normal(size=(400, 219)).astype(np.float32))
    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch PWNED'\ntR.")
    video = clip(tmp_path / "v.mp4", seconds=1) if "{video}" in args else None
    argv = [a.format(nan=tmp_path / "nan.npy", short=tmp_path / "short.npy", good=tmp_path / "good.npy", good2=tmp_path / "good2.npy",
                     evil=tmp_path / "evil.pkl", video=video, tmp=tmp_path) for a in args]
    if "--weights-dir" not in argv:
        argv += ["--weights-dir", str(tiny_weights)]
    out = subprocess.run([sys.executable, "-c", REJECT_CHILD, "score", "--model", "d2m", *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == f"exit={code} heavy=", out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "outputs").exists()
