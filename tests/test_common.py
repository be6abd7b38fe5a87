import json
from pathlib import Path

import pytest

from avtool.errors import BadInput
from avtool.pipelines.common import GenerationOptions, plan_jobs, resolve_device, resolve_dtype, write_sidecar


def test_one_job_per_input_and_seed(tmp_path):
    opts = GenerationOptions(output_dir=tmp_path, seeds=[3, 4])
    jobs = plan_jobs([Path("a/song.mp3"), Path("b/tune.wav")], opts, suffix="_generated")
    assert [(j.input.name, j.seed, j.output.name) for j in jobs] == [
        ("song.mp3", 3, "song_generated_seed3.mp4"),
        ("song.mp3", 4, "song_generated_seed4.mp4"),
        ("tune.wav", 3, "tune_generated_seed3.mp4"),
        ("tune.wav", 4, "tune_generated_seed4.mp4"),
    ]


def test_single_seed_keeps_the_plain_name_and_a_drawn_seed_is_an_int(tmp_path):
    (job,) = plan_jobs([Path("song.mp3")], GenerationOptions(output_dir=tmp_path), suffix="_generated")
    assert job.output == tmp_path / "song_generated.mp4"
    assert isinstance(job.seed, int) and 0 <= job.seed < 2**31


def test_output_file_only_for_one_job(tmp_path):
    opts = GenerationOptions(output=tmp_path / "x.mp4", seeds=[1])
    assert plan_jobs([Path("s.mp3")], opts, "_generated")[0].output == tmp_path / "x.mp4"
    with pytest.raises(BadInput, match="names one file but this run makes 2"):
        plan_jobs([Path("s.mp3")], GenerationOptions(output=tmp_path / "x.mp4", seeds=[1, 2]), "_generated")


def test_same_stem_twice_is_refused(tmp_path):
    with pytest.raises(BadInput, match="would both write"):
        plan_jobs([Path("a/song.mp3"), Path("b/song.wav")], GenerationOptions(output_dir=tmp_path, seeds=[1]), "_generated")


def test_skip_existing_drops_finished_jobs(tmp_path):
    (tmp_path / "song_generated_seed1.mp4").write_bytes(b"done")
    opts = GenerationOptions(output_dir=tmp_path, seeds=[1, 2], skip_existing=True)
    assert [j.seed for j in plan_jobs([Path("song.mp3")], opts, "_generated")] == [2]


def test_devices_and_dtypes():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(BadInput, match="expected auto, cpu"):
        resolve_device("tpu")
    with pytest.raises(BadInput, match="--dtype fp8"):
        resolve_dtype("fp8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA device"):
            resolve_device("cuda:0")


def test_sidecar_records_command_versions_and_fields(tmp_path):
    out = tmp_path / "video.mp4"
    sidecar = write_sidecar(out, {"seed": 7, "timings": {"total": 1.5}})
    assert sidecar == tmp_path / "video.mp4.json"
    record = json.loads(sidecar.read_text())
    assert record["seed"] == 7 and record["timings"] == {"total": 1.5}
    assert record["versions"]["avtool"] and isinstance(record["command"], list)
