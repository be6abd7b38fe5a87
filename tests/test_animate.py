"""`avtool animate` (MuseV) on tiny weights: windows, parallel denoising, outputs, task files, bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_avtool
from mediagen import clip
from test_cli import REJECT_CHILD

from avtool.media import crop_resize, read_frames, read_image
from avtool.pipelines import animate as pipeline
from avtool.pipelines.common import GenerationOptions
from avtool.sampling import ParallelDenoiser, context_windows


def image(path, seed: int = 0, size=(96, 80)):
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    pixels = cv2.GaussianBlur(pixels, (9, 9), 3)  # smooth enough for a VAE round trip to keep it
    cv2.imwrite(str(path), pixels)
    return path


def test_windows_follow_musevs_uniform_v2_schedule():
    assert context_windows(12, 12, 4) == [list(range(12))]
    sixty = context_windows(60, 12, 4)
    assert [w[0] for w in sixty] == [0, 8, 16, 24, 32, 40, 48] and sixty[-1] == list(range(48, 60))  # [56..59] dropped
    assert context_windows(14, 12, 4) == [list(range(12)), [8, 9, 10, 11, 12, 13]]  # a shorter last window stays
    with pytest.raises(ValueError):
        context_windows(12, 4, 4)
    for frames, size, overlap in ((1, 12, 4), (13, 12, 4), (48, 12, 4), (50, 12, 0), (37, 5, 3), (192, 12, 11)):
        windows = context_windows(frames, size, overlap)
        assert sorted({f for w in windows for f in w}) == list(range(frames)), (frames, size, overlap)  # every frame
        assert all(len(w) <= size and w == list(range(w[0], w[-1] + 1)) for w in windows)


def test_parallel_denoising_leads_each_window_with_the_condition_and_averages_overlaps():
    calls = []

    def window_id(x, t):
        calls.append(x.clone())
        return torch.full_like(x, float(len(calls)))  # each call predicts its own number everywhere

    condition = torch.full((1, 2, 1, 3, 3), -1.0)
    x = torch.arange(20.0).view(1, 1, 20, 1, 1).expand(1, 2, 20, 3, 3)
    denoise = ParallelDenoiser(window_id, context_windows(20, 8, 4), condition, batch_size=1)
    out = denoise(x, torch.tensor(1.0))
    assert [c.shape[2] for c in calls] == [9, 9, 9, 9]  # windows 0-7, 4-11, 8-15, 12-19, each after the condition
    for call, start in zip(calls, (0, 4, 8, 12), strict=True):
        assert torch.equal(call[:, :, 0], condition[:, :, 0]) and torch.equal(call[:, :, 1:], x[:, :, start:start + 8])
    expected = torch.tensor([1.0] * 4 + [1.5] * 4 + [2.5] * 4 + [3.5] * 4 + [4.0] * 4)
    assert torch.equal(out[0, 0, :, 0, 0], expected)


def test_the_unet_never_sees_more_than_one_window_batch():
    seen = []

    def record(x, t):
        seen.append(x.shape[0] * x.shape[2])
        return x

    condition = torch.zeros(1, 4, 1, 2, 2)
    for frames in (12, 48, 192):
        seen.clear()
        ParallelDenoiser(record, context_windows(frames, 12, 4), condition, batch_size=2)(torch.zeros(1, 4, frames, 2, 2), 0)
        assert max(seen) <= 2 * (12 + 1), frames  # two windows of 12 frames after the condition frame


@pytest.mark.parametrize(("args", "message"), [
    ([], "nothing to animate"),
    (["--prompt", "x", "--variant", "musev2"], "--variant musev2: expected one of musev"),
    (["--prompt", "x", "--context-overlap", "12"], "--context-overlap 12: must be from 0 to 11"),
    (["--prompt", "x", "--target", "a"], "--target picks items of a --task-file"),
    (["--prompt", "x", "--height", "100"], "--height 100: must be a multiple of 64"),
    (["--image", "{text}"], "not an image OpenCV can read"),
    (["--task-file", "{tasks}", "--target", "nobody"], "--target nobody: no such item"),
    (["--task-file", "{tasks}", "--prompt", "x"], "--task-file items bring their own images and prompts"),
    (["--task-file", "{tasks}", "--target", "lost"], "item lost: image missing.png not found"),
    (["--prompt", "x", "--pose-video", "{pose}", "--time-size", "12"], "13 are needed (1 + --n-batch 1 x --time-size 12"),
])
def test_bad_options_and_inputs_are_refused_before_torch(tiny_weights, tmp_path, args, message):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "tasks.yaml").write_text("- name: found\n  prompt: a face\n- name: lost\n  condition_images: missing.png\n")
    pose = clip(tmp_path / "pose.mp4", seconds=1, fps=10, size="64x64", audio=False) if "{pose}" in args else None
    argv = [a.format(text=tmp_path / "notes.png", tasks=tmp_path / "tasks.yaml", pose=pose) for a in args]
    run = subprocess.run([sys.executable, "-c", REJECT_CHILD, "animate", *argv, "--weights-dir", str(tiny_weights),
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert run.stdout.strip() == "exit=2 heavy=" and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def test_a_task_file_with_two_items_runs_both_and_a_seed_repeats_the_video(tiny_weights, tmp_path):
    """Two items with one image and prompt under one seed: identical videos; each starts from its image."""
    face = image(tmp_path / "face.png")
    (tmp_path / "tasks.yaml").write_text(
        "- name: first\n  condition_images: face.png\n  ipadapter_image: ${.condition_images}\n"
        "  prompt: (masterpiece:1),(1girl, solo:1),(eye blinks:{eye_blinks_factor})\n  eye_blinks_factor: 1.8\n"
        "- name: second\n  condition_images: face.png\n  prompt: (masterpiece:1),(1girl, solo:1),(eye blinks:1.8)\n")
    out = tmp_path / "out"
    run = run_avtool("animate", "--task-file", tmp_path / "tasks.yaml", "--weights-dir", tiny_weights, "--seed", "3",
                     "--time-size", "6", "--context-frames", "4", "--context-overlap", "2", "--steps", "2",
                     "--output-dir", out, "--json")
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["output"] for r in results] == [str(out / "first_animated.mp4"), str(out / "second_animated.mp4")]
    first, second = (read_frames(out / f"{name}_animated.mp4") for name in ("first", "second"))
    assert first.shape == (7, 64, 64, 3) and np.array_equal(first, second)
    assert results[0]["prompt"].endswith("(eye blinks:1.8)")
    # the first frame is the image through the (tiny, random) VAE's round trip, then H.264 (which blurs the random
    # VAE's grain a lot at 64 px): much closer to it than to another image's round trip
    from diffusers import AutoencoderKL

    from avtool.pipelines.animate import decode_latents, encode_image

    vae = AutoencoderKL.from_pretrained(tiny_weights / "musev/vae/sd-vae-ft-mse").eval()

    def round_trip(path):
        with torch.inference_mode():
            return decode_latents(vae, encode_image(vae, crop_resize(read_image(path), 64, 64)))[0].astype(float)

    expected, other = round_trip(face), round_trip(image(tmp_path / "other.png", seed=1))
    assert np.abs(first[0] - expected).mean() < 0.6 * np.abs(first[0] - other).mean()
    sidecar = json.loads((out / "first_animated.mp4.json").read_text())
    assert sidecar["seed"] == 3 and sidecar["subcommand"] == "animate" and sidecar["task"] == "first"


def test_frame_conditioning_is_cut_to_each_window_after_the_condition_frames():
    seen = []

    def record(x, t, control):
        seen.append(control[:, 0, :, 0, 0].tolist())
        return x

    control = torch.arange(11.0).view(1, 1, 11, 1, 1)  # the condition frame's, then 10 frames'
    denoise = ParallelDenoiser(record, context_windows(10, 6, 2), torch.zeros(1, 1, 1, 1, 1), batch_size=2,
                               frame_args=("control",))
    denoise(torch.zeros(1, 1, 10, 1, 1), 0, control=control)
    assert seen == [[[0, 1, 2, 3, 4, 5, 6], [0, 5, 6, 7, 8, 9, 10]]]  # two windows batched, each led by frame 0's


def test_missing_weights_name_the_download(tmp_path):
    (tmp_path / "weights" / "musev" / "motion").mkdir(parents=True)
    run = subprocess.run([sys.executable, "-c", REJECT_CHILD, "animate", "--prompt", "a face", "--weights-dir",
                          str(tmp_path / "weights")], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.stdout.strip() == "exit=3 heavy=" and "hint: run: avtool download-weights musev" in run.stderr, run.stderr


def test_a_pose_video_drives_the_frames_through_the_controlnet(tiny_weights, tmp_path):
    face = image(tmp_path / "face.png")
    videos = {}
    for name, pattern in (("bars", "smptebars"), ("grid", "testsrc")):
        pose = tmp_path / f"{name}.mp4"
        from mediagen import ffmpeg

        ffmpeg("-f", "lavfi", "-i", f"{pattern}=size=64x64:rate=10:duration=1", "-pix_fmt", "yuv420p", str(pose))
        opts = GenerationOptions(output_dir=tmp_path / name, seeds=[2], steps=2, weights_dir=tiny_weights, quiet=True)
        request = pipeline.AnimateRequest(image=face, prompt="a dancer", pose_video=pose, time_size=4)
        [result] = list(pipeline.animate(request, opts))
        assert result["variant"] == "musev_referencenet_pose" and result["num_frames"] == 5
        videos[name] = read_frames(result["output"])
    assert videos["bars"].shape == (5, 64, 64, 3)
    assert np.array_equal(videos["bars"][0], videos["grid"][0])  # the image's frame does not depend on the poses
    assert not np.array_equal(videos["bars"][1:], videos["grid"][1:])  # the frames after it do


def test_a_pose_video_without_the_controlnet_names_its_download(tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "musev").symlink_to(tiny_weights / "musev")
    pose = clip(tmp_path / "pose.mp4", seconds=1, fps=10, size="64x64", audio=False)
    run = run_avtool("animate", "--prompt", "x", "--pose-video", pose, "--time-size", "4", "--weights-dir", weights)
    assert run.returncode == 3 and "download-weights controlnet-openpose" in run.stderr, run.stderr
