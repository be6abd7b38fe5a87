"""`avtool dance` end to end through the CLI on tiny weights."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from mediagen import clip, ffmpeg
from safetensors import safe_open
from safetensors.torch import save_file

from avtool.errors import WeightsError
from avtool.media import load_audio, probe


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """A 6 s stereo chirp: its pitch changes every instant, so a misplaced excerpt does not correlate."""
    path = tmp_path_factory.mktemp("music") / "song.wav"
    ffmpeg("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(200+150*t)*t)|0.4*sin(2*PI*(900-100*t)*t):s=44100:d=6", str(path))
    return path


def dance_args(weights, *extra):
    return ["dance", "--weights-dir", weights, "--steps", "2", *extra]


def test_dance_writes_the_video_with_the_excerpt(avtool, tiny_weights, song, tmp_path):
    out = tmp_path / "out"
    run = avtool(*dance_args(tiny_weights, song, "--num-frames", "13", "--seed", "3", "--fps", "24", "--height", "48",
                             "--width", "64", "--output-dir", out, "--json"))
    assert run.returncode == 0, run.stderr
    [result] = [json.loads(line) for line in run.stdout.splitlines()]
    video = out / "song_generated.mp4"
    assert result["output"] == str(video) and result["seed"] == 3
    info = probe(video)
    assert (info.video.num_frames, info.video.fps, info.video.width, info.video.height) == (13, 24, 64, 48)
    assert (info.audio.sample_rate, info.audio.channels) == (44100, 2)

    seconds = 13 / 24
    excerpt, _ = load_audio(song, mono=False, start=result["start"], duration=seconds)
    muxed, _ = load_audio(video, mono=False)
    n = min(excerpt.shape[1], muxed.shape[1])
    assert n > 0.9 * seconds * 44100
    for channel in range(2):
        assert np.corrcoef(excerpt[channel, :n], muxed[channel, :n])[0, 1] > 0.95
    sidecar = json.loads((out / "song_generated.mp4.json").read_text())
    assert sidecar["seed"] == 3 and sidecar["start"] == result["start"] and sidecar["num_frames"] == 13


def test_skip_existing_and_default_size(avtool, tiny_weights, song, tmp_path):
    out = tmp_path / "out"
    first = avtool(*dance_args(tiny_weights, song, "--num-frames", "7", "--seed", "1", "--seed", "2", "--output-dir", out))
    assert first.returncode == 0, first.stderr
    videos = [out / f"song_generated_seed{s}.mp4" for s in (1, 2)]
    info = probe(videos[0]).video
    assert (info.num_frames, info.width, info.height) == (7, 48, 32)  # the tiny transformer's sample size x 8
    stamps = [v.stat().st_mtime_ns for v in videos]
    videos[1].unlink()
    again = avtool(*dance_args(tiny_weights, song, "--num-frames", "7", "--seed", "1", "--seed", "2", "--output-dir", out,
                               "--skip-existing", "--json"))
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["seed"] for line in again.stdout.splitlines()] == [2]
    assert videos[0].stat().st_mtime_ns == stamps[0] and videos[1].exists()


def test_bad_num_frames_names_the_nearest_valid_values(avtool, song, tmp_path):
    run = avtool("dance", song, "--num-frames", "100", "--weights-dir", tmp_path / "none")
    assert run.returncode == 2
    assert "--num-frames 100" in run.stderr and "97 or 103" in run.stderr


def test_bad_inputs_and_options_exit_2(avtool, tiny_weights, tmp_path):
    silent = clip(tmp_path / "silent.mp4", seconds=1, audio=False)
    run = avtool(*dance_args(tiny_weights, silent, "--num-frames", "7"))
    assert run.returncode == 2 and "has no audio track" in run.stderr
    run = avtool(*dance_args(tiny_weights, tmp_path / "missing.mp3"))
    assert run.returncode == 2 and "missing.mp3: no such file" in run.stderr


def test_cuda_graph_without_cuda_exits_2(avtool, tiny_weights, song, tmp_path):
    run = avtool(*dance_args(tiny_weights, song, "--num-frames", "7", "--device", "cpu", "--runner", "cuda-graph",
                             "--output-dir", tmp_path))
    assert run.returncode == 2 and "--runner cuda-graph needs a CUDA device" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_weights_exit_3_with_the_download_hint(avtool, song, tmp_path):
    run = avtool("dance", song, "--num-frames", "7", "--weights-dir", tmp_path / "weights", "--output-dir", tmp_path / "out")
    assert run.returncode == 3
    assert "mochi-1-preview" in run.stderr and "avtool download-weights mochi-1-preview" in run.stderr
    assert not (tmp_path / "out").exists()


def test_renamed_adapter_key_exits_3(avtool, tiny_weights, song, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    adapter = weights / "musicinfuser" / "musicinfuser.safetensors"
    with safe_open(adapter, "pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    victim = next(key for key in sorted(tensors) if "lora_A" in key)
    tensors[victim.replace("lora_A", "lora_a")] = tensors.pop(victim)
    save_file(tensors, adapter, metadata=metadata)
    run = avtool(*dance_args(weights, song, "--num-frames", "7", "--output-dir", tmp_path / "out"))
    assert run.returncode == 3, run.stderr
    assert victim.replace("lora_A", "lora_a") in run.stderr and "download-weights musicinfuser" in run.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_ctrl_c_during_sampling_exits_130_and_leaves_no_file(tiny_weights, song, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "1000"}  # one message per line
    proc = subprocess.Popen([sys.executable, "-m", "avtool", *map(str, dance_args(tiny_weights, song)), "--steps", "1000",
                             "--num-frames", "7", "--seed", "1", "--output-dir", out],
                            env=env, stderr=subprocess.PIPE, text=True)
    sampling, lines = threading.Event(), []

    def watch() -> None:
        for line in proc.stderr:
            lines.append(line)
            if " -> " in line and "steps" in line:  # the pipeline announces each job right before sampling it
                sampling.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert sampling.wait(timeout=120), "".join(lines)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        watcher.join(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, "".join(lines)
    assert "interrupted" in "".join(lines)
    assert list(out.iterdir()) == []  # neither the video, nor its sidecar, nor a temporary file


def test_json_results_stream_and_keep_going_runs_past_a_failed_job(avtool, tiny_weights, song, tmp_path):
    out = tmp_path / "out"
    silent = tmp_path / "silent.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "3", str(silent))
    other = shutil.copy(song, tmp_path / "other.wav")
    args = dance_args(tiny_weights, song, silent, other, "--num-frames", "7", "--seed", "1", "--output-dir", out, "--json")
    stop = avtool(*args)
    assert stop.returncode == 2, stop.stderr
    [first] = [json.loads(line) for line in stop.stdout.splitlines()]  # job 1's result was printed before job 2 failed
    assert first["output"] == str(out / "song_generated.mp4") and (out / "song_generated.mp4").is_file()
    assert "silent.wav: the excerpt" in stop.stderr and "is silent" in stop.stderr
    assert not (out / "other_generated.mp4").exists()

    go_on = avtool(*args, "--keep-going", "--skip-existing")
    results = [json.loads(line) for line in go_on.stdout.splitlines()]
    assert [(Path(r["output"]).name, "error" in r) for r in results] == [("silent_generated.mp4", True), ("other_generated.mp4", False)]
    assert go_on.returncode == results[0]["exit_code"] == 2
    errors = [line for line in go_on.stderr.splitlines() if line.startswith("error:")]  # the failed job's, then the summary
    assert len(errors) == 2 and "silent_generated.mp4" in errors[0] and "1 of 2 jobs failed" in errors[1]
    assert (out / "other_generated.mp4").is_file() and not (out / "silent_generated.mp4").exists()


def test_torchrun_ranks_share_the_jobs_and_write_what_one_process_writes(tiny_weights, song, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = [*map(str, dance_args(tiny_weights, song, "--num-frames", "7", "--seed", "1", "--seed", "2", "--seed", "3", "-q"))]
    one = subprocess.run([sys.executable, "-m", "avtool", *args, "--output-dir", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "avtool", *args, "--output-dir", str(tmp_path / "ranks")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert ranks.returncode == 0, ranks.stderr

    def videos(folder):
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.mp4"))}

    assert videos(tmp_path / "ranks") == videos(tmp_path / "one") and len(videos(tmp_path / "one")) == 3
    shards = {path.name: json.loads(path.read_text())["shard"] for path in (tmp_path / "ranks").glob("*.mp4.json")}
    assert shards == {"song_generated_seed1.mp4.json": [1, 2], "song_generated_seed2.mp4.json": [2, 2],
                      "song_generated_seed3.mp4.json": [1, 2]}
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.parametrize(("phase", "name", "target"), [
    ("sampling", "SIGTERM", "process"), ("decode", "SIGHUP", "process"), ("write", "SIGINT", "process"),
    ("write", "SIGTERM", "group"), ("decode", "SIGINT", "group"), ("sampling", "SIGHUP", "group"),
])
def test_stop_signals_leave_nothing_behind(tiny_weights, song, tmp_path, phase, name, target):
    import psutil

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'signalhook'}{os.pathsep}{REPO}", "HF_HUB_OFFLINE": "1",
           "AVTOOL_TEST_SIGNAL": f"{phase}:{name}:{target}"}
    run = subprocess.run([sys.executable, "-m", "avtool", *map(str, dance_args(tiny_weights, song)), "--num-frames", "7",
                          "--seed", "1", "--output-dir", out], env=env, capture_output=True, text=True, timeout=300,
                         start_new_session=True)  # its own process group, so a group signal stays there
    assert run.returncode == 128 + getattr(signal, name), run.stderr
    assert f"error: interrupted ({name})" in run.stderr and "Traceback" not in run.stderr
    assert list(out.iterdir()) == []  # no video, no sidecar, no temporary file
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize(("damage", "message"), [
    ("truncate:mochi-1-preview/text_encoder", "text_encoder: unreadable (SafetensorError"),
    ("truncate:wav2vec2-base-960h", "wav2vec2-base-960h: unreadable (SafetensorError"),
    ("pickle:wav2vec2-base-960h", "refused: this checkpoint needs arbitrary pickled code"),
])
def test_damaged_weights_exit_3_in_one_line(avtool, tiny_weights, song, tmp_path, damage, message):
    kind, folder = damage.split(":")
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    victim = next((weights / folder).glob("*.safetensors"))
    if kind == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:  # a pickle whose loading would run a shell command
        victim.unlink()
        marker = tmp_path / "payload-ran"
        (weights / folder / "pytorch_model.bin").write_bytes(
            b"\x80\x04\x95" + len(f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode()).to_bytes(8, "little")
            + f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode())
    run = avtool(*dance_args(weights, song, "--num-frames", "7", "--output-dir", tmp_path / "out"))
    assert run.returncode == 3, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in run.stderr
    assert "hint:" in run.stderr and not (tmp_path / "payload-ran").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_weights_without_a_tokenizer_file_are_refused_before_loading(avtool, tiny_weights, song, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "mochi-1-preview" / "tokenizer" / "tokenizer.json").unlink()
    run = avtool(*dance_args(weights, song, "--num-frames", "7", "--output-dir", tmp_path / "out"))
    assert run.returncode == 3 and "tokenizer/tokenizer.json" in run.stderr and "download-weights mochi-1-preview" in run.stderr


def test_audio_that_starts_late_gives_a_dance_to_sound(avtool, tiny_weights, tmp_path):
    late = tmp_path / "late.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=10", "-itsoffset", "5", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=44100:duration=5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(late))
    for seed in ("1", "2"):
        run = avtool(*dance_args(tiny_weights, late, "--num-frames", "7", "--seed", seed, "--output-dir", tmp_path / seed, "--json"))
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert 4.9 < result["start"] < 10.0
        muxed, _ = load_audio(result["output"])
        assert np.abs(muxed).max() > 0.05
    run = avtool(*dance_args(tiny_weights, late, "--num-frames", "7", "--start", "1", "--output-dir", tmp_path / "early"))
    assert run.returncode == 2 and "the audio of" in run.stderr and "runs from 4.9" in run.stderr


def test_the_files_checked_follow_the_classes_in_model_index(tiny_weights, tmp_path):
    from avtool.pipelines import dance as pipeline

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    tokenizer = weights / "mochi-1-preview" / "tokenizer"
    (tokenizer / "tokenizer.json").rename(tokenizer / "spiece.model")  # a slow tokenizer's file stands in
    checked = pipeline.check_weights(weights).files["mochi-1-preview"]
    assert tokenizer / "spiece.model" in checked and weights / "mochi-1-preview" / "scheduler" / "scheduler_config.json" not in checked
    index = json.loads((weights / "mochi-1-preview" / "model_index.json").read_text())
    index["vae"] = ["transformers", "SomeTransformersVAE"]  # a transformers model's weights are model.safetensors
    (weights / "mochi-1-preview" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"vae/model\.safetensors"):
        pipeline.check_weights(weights)
