"""The shared job driver: planning, shards, the per-job loop with --keep-going, sidecars; devices and dtypes."""

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from avtool.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BadInput
from avtool.pipelines.common import (
    GenerationOptions,
    Job,
    JobsFailed,
    Rendered,
    RunInfo,
    job_stem,
    plan_jobs,
    run_jobs,
    weights_record,
    write_sidecar,
)
from avtool.runtime import Shard, resolve_device, resolve_dtype, resolve_shard


def music(*paths: str) -> list[dict]:
    return [{"music": Path(p)} for p in paths]


def test_one_job_per_input_and_seed(tmp_path):
    opts = GenerationOptions(output_dir=tmp_path, seeds=[3, 4])
    jobs = plan_jobs(music("a/song.mp3", "b/tune.wav"), opts, suffix="_generated")
    assert [(j.inputs["music"].name, j.seed, j.output.name) for j in jobs] == [
        ("song.mp3", 3, "song_generated_seed3.mp4"),
        ("song.mp3", 4, "song_generated_seed4.mp4"),
        ("tune.wav", 3, "tune_generated_seed3.mp4"),
        ("tune.wav", 4, "tune_generated_seed4.mp4"),
    ]


def test_output_stem_comes_from_the_first_file_else_the_text():
    assert job_stem({"image": Path("faces/anna.png"), "prompt": "a girl"}) == "anna"
    assert job_stem({"prompt": "(masterpiece:1.2), a girl: smiling!"}) == "masterpiece_1_2_a_girl_smiling"
    assert job_stem({"prompt": "!!!"}) == "output"


def test_single_seed_keeps_the_plain_name_and_a_drawn_seed_is_an_int(tmp_path):
    (job,) = plan_jobs(music("song.mp3"), GenerationOptions(output_dir=tmp_path), suffix="_generated")
    assert job.output == tmp_path / "song_generated.mp4"
    assert isinstance(job.seed, int) and 0 <= job.seed < 2**31


def test_output_file_only_for_one_job(tmp_path):
    opts = GenerationOptions(output=tmp_path / "x.mp4", seeds=[1])
    assert plan_jobs(music("s.mp3"), opts, "_generated")[0].output == tmp_path / "x.mp4"
    with pytest.raises(BadInput, match="names one file but this run makes 2"):
        plan_jobs(music("s.mp3"), GenerationOptions(output=tmp_path / "x.mp4", seeds=[1, 2]), "_generated")


def test_same_stem_twice_is_refused(tmp_path):
    with pytest.raises(BadInput, match="would both write"):
        plan_jobs(music("a/song.mp3", "b/song.wav"), GenerationOptions(output_dir=tmp_path, seeds=[1]), "_generated")


def finish(output: Path, content: bytes = b"done") -> None:
    """An output as a run leaves it: the file, then its sidecar."""
    output.write_bytes(content)
    write_sidecar(Job({}, 0, output), RunInfo("test", "cpu", "float32", 1, {}, {}), Rendered({}, {}))


def test_skip_existing_drops_only_complete_jobs(tmp_path):
    opts = GenerationOptions(output_dir=tmp_path, seeds=[1, 2, 3, 4, 5], skip_existing=True)
    outputs = [tmp_path / f"song_generated_seed{s}.mp4" for s in range(1, 6)]
    finish(outputs[0])
    finish(outputs[1])
    outputs[1].write_bytes(b"dona")  # changed after its sidecar was written
    finish(outputs[2])
    outputs[2].write_bytes(b"")  # truncated
    outputs[3].write_bytes(b"done")  # no sidecar: the run died before it
    assert [j.seed for j in plan_jobs(music("song.mp3"), opts, "_generated")] == [2, 3, 4, 5]


def test_shards_split_the_plan_stably_and_skip_existing_applies_after_the_split(tmp_path):
    opts = GenerationOptions(output_dir=tmp_path, seeds=[1, 2, 3])
    everything = plan_jobs(music("a.mp3", "b.mp3", "c.mp3"), opts, "_x")
    shares = [plan_jobs(music("a.mp3", "b.mp3", "c.mp3"), opts, "_x", shard=Shard(k, 4)) for k in range(4)]
    assert sorted(j.output for share in shares for j in share) == sorted(j.output for j in everything)
    assert sum(len(share) for share in shares) == len(everything) == 9
    # a finished job of shard 0 does not move any other job to another shard
    finish(shares[0][0].output)
    again = GenerationOptions(output_dir=tmp_path, seeds=[1, 2, 3], skip_existing=True)
    assert plan_jobs(music("a.mp3", "b.mp3", "c.mp3"), again, "_x", shard=Shard(0, 4)) == shares[0][1:]
    assert plan_jobs(music("a.mp3", "b.mp3", "c.mp3"), again, "_x", shard=Shard(1, 4)) == shares[1]


def test_shard_from_the_option_or_the_launcher():
    assert resolve_shard("2/4", {}) == Shard(1, 4)
    assert resolve_shard(None, {}) is None
    assert resolve_shard(None, {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1, launcher=True)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}) \
        == Shard(4, 8, 0, launcher=True)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        with pytest.raises(BadInput, match="--shard"):
            resolve_shard(bad, {})
    with pytest.raises(BadInput, match="rank 4 is outside"):
        resolve_shard(None, {"RANK": "4", "WORLD_SIZE": "4"})


def test_options_are_checked_without_loading():
    for opts, message in ((GenerationOptions(seeds=[2**64]), "--seed"), (GenerationOptions(device="tpu"), "--device tpu"),
                          (GenerationOptions(dtype="fp8"), "--dtype fp8"), (GenerationOptions(generator="gpu"), "--generator"),
                          (GenerationOptions(steps=1), "--steps 1"), (GenerationOptions(shard="3/2"), "--shard")):
        with pytest.raises(BadInput, match=message):
            opts.check(min_steps=2)


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
        assert resolve_device("auto", Shard(1, 2, 1, launcher=True)) == "cpu"
        with pytest.raises(BadInput, match="no CUDA device"):
            resolve_device("cuda:0")


def fake_run(tmp_path, fail_on: set[int], keep_going: bool, error: Exception):
    """Three jobs whose render writes a file, except for the seeds in `fail_on`, which raise `error`."""
    opts = GenerationOptions(output_dir=tmp_path, seeds=[1, 2, 3], keep_going=keep_going, quiet=True)
    jobs = plan_jobs(music("song.mp3"), opts, "_x", ext=".txt")
    loads = []

    def load():
        loads.append(1)
        return "models", RunInfo("test", "cpu", "float32", 4, {"m": {"f": "00"}}, {"opt": 1})

    def render(models: str, job: Job) -> Rendered:
        if job.seed in fail_on:
            raise error
        job.output.write_text(f"{models} {job.seed}")
        return Rendered({"answer": job.seed * 10}, {"work": 0.5})

    return run_jobs(jobs, opts, load, render), loads


def test_results_come_one_by_one_and_models_load_once(tmp_path):
    results, loads = fake_run(tmp_path, set(), keep_going=False, error=RuntimeError())
    first = next(results)  # job 1 is reported before job 2 runs
    assert first["seed"] == 1 and first["answer"] == 10 and not (tmp_path / "song_x_seed2.txt").exists()
    assert [r["seed"] for r in results] == [2, 3] and loads == [1]


def test_without_keep_going_the_first_failure_stops_the_run(tmp_path):
    results, _ = fake_run(tmp_path, {2}, keep_going=False, error=BadInput("bad excerpt"))
    assert next(results)["seed"] == 1
    with pytest.raises(BadInput, match="bad excerpt"):
        next(results)
    assert not (tmp_path / "song_x_seed3.txt").exists()


def test_keep_going_reports_each_failure_and_exits_with_the_first_code(tmp_path):
    results, _ = fake_run(tmp_path, {1, 2}, keep_going=True, error=BadInput("bad excerpt", hint="try --start"))
    seen = []
    with pytest.raises(JobsFailed) as failed:
        for result in results:
            seen.append(result)
    assert [("error" in r, r["seed"]) for r in seen] == [(True, 1), (True, 2), (False, 3)]
    assert seen[0]["error"] == "bad excerpt" and seen[0]["hint"] == "try --start" and seen[0]["exit_code"] == EXIT_BAD_INPUT
    assert failed.value.exit_code == EXIT_BAD_INPUT and "2 of 3 jobs failed" in failed.value.message
    assert (tmp_path / "song_x_seed3.txt").exists()


def test_keep_going_turns_an_internal_error_into_exit_1(tmp_path):
    results, _ = fake_run(tmp_path, {3}, keep_going=True, error=ZeroDivisionError("oops"))
    seen = []
    with pytest.raises(JobsFailed) as failed:
        seen.extend(results)
    assert [r["seed"] for r in seen] == [1, 2, 3] and seen[2]["exit_code"] == EXIT_INTERNAL
    assert failed.value.exit_code == EXIT_INTERNAL and "internal error: ZeroDivisionError: oops" in failed.value.message


def test_sidecar_records_the_run_the_job_and_the_output_digest(tmp_path):
    out = tmp_path / "video.mp4"
    out.write_bytes(b"frames")
    info = RunInfo("dance", "cpu", "bfloat16", 64, {"musicinfuser": {"a": "ff"}}, {"cfg_scale": 6.0}, Shard(1, 3), 2.0)
    sidecar = write_sidecar(Job({"music": Path("song.mp3")}, 7, out), info, Rendered({"start": 1.5}, {"sampling": 3.25}))
    assert sidecar == tmp_path / "video.mp4.json"
    record = json.loads(sidecar.read_text())
    assert record["seed"] == 7 and record["steps"] == 64 and record["dtype"] == "bfloat16" and record["shard"] == [2, 3]
    assert record["inputs"] == {"music": "song.mp3"} and record["start"] == 1.5 and record["options"] == {"cfg_scale": 6.0}
    assert record["timings"] == {"load": 2.0, "sampling": 3.25} and record["weights"] == {"musicinfuser": {"a": "ff"}}
    assert record["output"] == {"path": str(out), "size": 6, "sha256": hashlib.sha256(b"frames").hexdigest()}
    assert record["versions"]["avtool"] and isinstance(record["command"], list)


def test_outputs_get_the_mode_a_plain_open_gives(tmp_path):
    from avtool.media.files import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_weights_record_reads_manifest_hashes_and_hashes_only_unlisted_files(tmp_path):
    from avtool.weights.manifest import digests, write_manifest

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "big.safetensors").write_bytes(b"big weights")
    (folder / "extra.json").write_bytes(b"{}")
    write_manifest(folder, {"kind": "test"}, {"big.safetensors": digests(folder / "big.safetensors")})
    # the manifest's hash is trusted (not recomputed): change it and the record follows the manifest
    manifest = json.loads((folder / "avtool-manifest.json").read_text())
    manifest["files"]["big.safetensors"]["sha256"] = "from-manifest"
    (folder / "avtool-manifest.json").write_text(json.dumps(manifest))
    record = weights_record({"m": [folder / "big.safetensors", folder / "extra.json"]})
    assert record == {"m": {str(folder / "big.safetensors"): "from-manifest",
                            str(folder / "extra.json"): hashlib.sha256(b"{}").hexdigest()}}


def test_outputs_that_would_overwrite_are_refused_before_anything_loads(tmp_path):
    from avtool.pipelines.common import check_output

    song = tmp_path / "song.mp4"
    song.write_bytes(b"the input")
    (tmp_path / "link.mp4").symlink_to(song)
    for output in (song, tmp_path / "link.mp4"):
        with pytest.raises(BadInput, match="is the input"):
            check_output(Job({"music": song}, 1, output), replace=True)  # never, even with --overwrite
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"someone's")
    with pytest.raises(BadInput, match="taken.mp4: exists"):
        check_output(Job({"music": song}, 1, taken), replace=False)
    check_output(Job({"music": song}, 1, taken), replace=True)
    taken.chmod(0o444)
    with pytest.raises(BadInput, match="read-only"):
        check_output(Job({"music": song}, 1, taken), replace=True)
    (tmp_path / "x.mp4.json").mkdir()
    with pytest.raises(BadInput, match="x.mp4.json: is a folder"):
        check_output(Job({"music": song}, 1, tmp_path / "x.mp4"), replace=False)
    with pytest.raises(BadInput, match="writes .mp4 files"):
        plan_jobs(music("song.mp3"), GenerationOptions(output=tmp_path / "out.wav", seeds=[1]), "_x")
