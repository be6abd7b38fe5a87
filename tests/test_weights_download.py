"""`avtool download-weights` against a fake hub on 127.0.0.1 (tests/hubserver.py): the `musicinfuser` model
(components musicinfuser/ and wav2vec2-base-960h/) with small random files in place of the real ones."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_avtool
from hubserver import FakeHub, HubState
from hubserver import Repo as FakeRepo

ADAPTER = random.Random(0).randbytes(12 * 2**20 + 123)  # past huggingface_hub's 10 MiB write chunk
WAV2VEC2 = {
    "config.json": b'{"model_type": "wav2vec2"}',
    "preprocessor_config.json": b'{"sampling_rate": 16000}',
    "vocab.json": b'{"<pad>": 0}',
    "model.safetensors": random.Random(1).randbytes(300_000),
    "pytorch_model.bin": random.Random(2).randbytes(1000),
    "tf_model.h5": b"tensorflow weights",
    "README.md": b"# card",
}
WANTED = {"musicinfuser/musicinfuser.safetensors": ADAPTER} | {
    f"wav2vec2-base-960h/{name}": WAV2VEC2[name]
    for name in ("config.json", "preprocessor_config.json", "vocab.json", "model.safetensors")
}


@pytest.fixture
def hub(tmp_path):
    state = HubState(repos={
        "susunghong/MusicInfuser": FakeRepo({"musicinfuser.safetensors": ADAPTER, "README.md": b"# MusicInfuser"}),
        "facebook/wav2vec2-base-960h": FakeRepo(dict(WAV2VEC2), commit="fedcba9876543210fedcba9876543210fedcba98"),
    })
    with FakeHub(state) as server:
        server.env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
                      "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        yield server


def fetch(hub, weights: Path, *args: str, offline: bool = False) -> subprocess.CompletedProcess:
    env = {**hub.env, "HF_HUB_OFFLINE": "1"} if offline else hub.env
    return run_avtool("download-weights", *args, "--dir", weights, env=env, timeout=120)


def assert_installed(weights: Path) -> None:
    for rel, data in WANTED.items():
        assert (weights / rel).read_bytes() == data, rel
    for folder in ("musicinfuser", "wav2vec2-base-960h"):
        manifest = json.loads((weights / folder / "avtool-manifest.json").read_text())
        names = {rel.split("/", 1)[1] for rel in WANTED if rel.startswith(folder + "/")}
        assert set(manifest["files"]) == names
        for name, entry in manifest["files"].items():
            data = (weights / folder / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_full_download_then_rerun_fetches_nothing(hub, tmp_path):
    weights = tmp_path / "weights"
    result = fetch(hub, weights, "musicinfuser", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {f"{e['folder']}/{e['file']}" for e in report["fetched"]} == set(WANTED)
    assert_installed(weights)
    assert not (weights / "wav2vec2-base-960h" / "pytorch_model.bin").exists()  # safetensors preferred
    assert not (weights / "wav2vec2-base-960h" / "tf_model.h5").exists()
    assert not (weights / "musicinfuser" / ".partial").exists()

    downloads = len(hub.state.gets("musicinfuser.safetensors"))
    again = fetch(hub, weights, "musicinfuser", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["fetched"] == [] and len(report["skipped"]) == len(WANTED)
    assert len(hub.state.gets("musicinfuser.safetensors")) == downloads

    listing = json.loads(run_avtool("download-weights", "--dir", weights, "--json").stdout)
    states = {c["folder"]: c for m in listing["models"] for c in m["components"]}
    assert states["musicinfuser"]["state"] == "present" and states["musicinfuser"]["bytes"] == len(ADAPTER)
    assert states["mochi-1-preview"]["state"] == "missing"


def test_download_cut_mid_file_is_resumed(hub, tmp_path):
    hub.state.cut_once["musicinfuser.safetensors"] = 11 * 2**20
    result = fetch(hub, tmp_path / "weights", "musicinfuser", "-q")
    assert result.returncode == 0, result.stderr
    # huggingface_hub writes in 10 MiB chunks: the retry asks for the rest after the last full chunk.
    assert hub.state.gets("musicinfuser.safetensors") == [None, f"bytes={10 * 2**20}-"]
    assert_installed(tmp_path / "weights")


def test_interrupted_run_resumes_from_partial_file(hub, tmp_path):
    weights = tmp_path / "weights"
    partial = weights / "musicinfuser" / ".partial" / f"{hashlib.sha256(ADAPTER).hexdigest()}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(ADAPTER[:1_000_000])  # what a killed run leaves behind
    result = fetch(hub, weights, "musicinfuser", "-q")
    assert result.returncode == 0, result.stderr
    assert hub.state.gets("musicinfuser.safetensors") == ["bytes=1000000-"]
    assert_installed(weights)


def test_corrupted_file_is_rejected_with_exit_3(hub, tmp_path):
    weights = tmp_path / "weights"
    hub.state.corrupt.add("musicinfuser.safetensors")
    result = fetch(hub, weights, "musicinfuser")
    assert result.returncode == 3
    assert "musicinfuser.safetensors" in result.stderr and "does not match" in result.stderr
    assert not (weights / "musicinfuser" / "musicinfuser.safetensors").exists()
    assert not (weights / "musicinfuser" / "avtool-manifest.json").exists()
    assert not list((weights / "musicinfuser").rglob("*.part"))
    assert (weights / "wav2vec2-base-960h" / "avtool-manifest.json").is_file()  # the other component still finished


def test_verify_reports_tampered_and_missing_files(hub, tmp_path):
    weights = tmp_path / "weights"
    assert fetch(hub, weights, "musicinfuser", "-q").returncode == 0
    ok = run_avtool("download-weights", "--verify", "--dir", weights, "--json")
    assert ok.returncode == 0, ok.stderr
    assert {(v["folder"], v["ok"]) for v in json.loads(ok.stdout)["verified"]} == {
        ("musicinfuser", True), ("wav2vec2-base-960h", True)}

    model = weights / "wav2vec2-base-960h" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[1000] ^= 1
    model.write_bytes(bytes(data))
    (weights / "wav2vec2-base-960h" / "vocab.json").unlink()
    bad = run_avtool("download-weights", "musicinfuser", "--verify", "--dir", weights, "--json")
    assert bad.returncode == 3
    problems = {Path(p["path"]).name: p["problem"] for p in json.loads(bad.stdout)["problems"]}
    assert set(problems) == {"model.safetensors", "vocab.json"}
    assert "sha256" in problems["model.safetensors"] and "missing" in problems["vocab.json"]
    assert "model.safetensors" in bad.stderr and "vocab.json" in bad.stderr


def test_two_concurrent_downloads_share_the_folder(hub, tmp_path):
    weights = tmp_path / "weights"
    hub.state.chunk_delay_s = 0.01
    env = {**os.environ, "PYTHONPATH": str(REPO), **hub.env}
    command = [sys.executable, "-m", "avtool", "download-weights", "musicinfuser", "--dir", str(weights)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not hub.state.gets("musicinfuser.safetensors") and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_first, out_second = first.communicate(timeout=120), second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (out_first, out_second)
    assert "waiting" in out_second[1]
    assert hub.state.gets("musicinfuser.safetensors") == [None]  # fetched once, never restarted
    assert hub.state.gets("model.safetensors") == [None]
    assert_installed(weights)


def test_offline_mode_uses_a_warm_cache(hub, tmp_path):
    warm = ("from huggingface_hub import snapshot_download\n"
            "for repo in ('susunghong/MusicInfuser', 'facebook/wav2vec2-base-960h'): snapshot_download(repo)\n")
    result = subprocess.run([sys.executable, "-c", warm], env={**os.environ, **hub.env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    requests_before = len(hub.state.log)

    weights = tmp_path / "weights"
    result = fetch(hub, weights, "musicinfuser", "--json", offline=True)
    assert result.returncode == 0, result.stderr
    assert {e["from"] for e in json.loads(result.stdout)["fetched"]} == {"cache"}
    assert_installed(weights)
    assert len(hub.state.log) == requests_before  # not one request
    again = fetch(hub, weights, "musicinfuser", "--json", offline=True)
    assert again.returncode == 0 and len(json.loads(again.stdout)["skipped"]) == len(WANTED)

    cold = {**hub.env, "HF_HOME": str(tmp_path / "cold")}
    result = run_avtool("download-weights", "musicinfuser", "--dir", tmp_path / "other",
                        env={**cold, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 3 and "not in the Hugging Face cache" in result.stderr


def test_dry_run_writes_nothing(hub, tmp_path):
    weights = tmp_path / "weights"
    result = fetch(hub, weights, "musicinfuser", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    planned = json.loads(result.stdout)["planned"]
    assert {f"{e['folder']}/{e['file']}" for e in planned} == set(WANTED)
    assert {e["action"] for e in planned} == {"download from the hub"}
    assert not weights.exists() or not [p for p in weights.rglob("*") if p.is_file()]
    assert hub.state.gets("musicinfuser.safetensors") == []


def test_bad_requests_exit_with_the_right_code(hub, tmp_path):
    unknown = fetch(hub, tmp_path / "w", "no-such-model")
    assert unknown.returncode == 2 and "no-such-model" in unknown.stderr
    revision = fetch(hub, tmp_path / "w", "musicinfuser", "--revision", "v9")
    assert revision.returncode == 3 and "no revision 'v9'" in revision.stderr
    d2m = fetch(hub, tmp_path / "w", "d2m")
    assert d2m.returncode == 3 and "publishes no weights" in d2m.stderr and "avtool train configs/d2m.yaml" in d2m.stderr
    variant = fetch(hub, tmp_path / "w", "musicinfuser", "--variant", "bf16")
    assert variant.returncode == 2 and "--variant bf16" in variant.stderr


def test_listing_without_hashes_falls_back_to_etags(hub, tmp_path):
    hub.state.listing_metadata = False
    hub.state.corrupt.add("model.safetensors")
    result = fetch(hub, tmp_path / "weights", "musicinfuser")
    assert result.returncode == 3 and "model.safetensors" in result.stderr
    assert not (tmp_path / "weights" / "wav2vec2-base-960h" / "model.safetensors").exists()
    hub.state.corrupt.clear()
    assert fetch(hub, tmp_path / "weights", "musicinfuser", "-q").returncode == 0
    assert_installed(tmp_path / "weights")


URL_AND_MANUAL = """
import json, sys
from pathlib import Path
from avtool.weights.download import Installer, Report
from avtool.weights.registry import Component, Model

url, weights = sys.argv[1:]
model = Model("beats-like", (
    Component("beats", url=url, files=("BEATs.pt",), approx_gb=0.1, licence="MIT"),
    Component("mapper", files=("learned_embeds.pth",), manual="get it from the project page", approx_gb=0.1, licence="MIT"),
), ("tokens",))
report = Report()
Installer(Path(weights), report, print).install(model)
print(json.dumps(report.as_dict()))
"""


def test_url_component_downloads_and_manual_component_says_where(hub, tmp_path):
    beats = random.Random(3).randbytes(200_000)
    hub.state.urls["/share/BEATs.pt"] = beats
    weights = tmp_path / "weights"

    def run():
        result = subprocess.run([sys.executable, "-c", URL_AND_MANUAL, hub.url + "/share/BEATs.pt", str(weights)],
                                env={**os.environ, "PYTHONPATH": str(REPO), **hub.env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    report = run()
    assert [(e["file"], e["from"]) for e in report["fetched"]] == [("BEATs.pt", "url")]
    assert (weights / "beats" / "BEATs.pt").read_bytes() == beats
    manifest = json.loads((weights / "beats" / "avtool-manifest.json").read_text())
    assert manifest["files"]["BEATs.pt"]["sha256"] == hashlib.sha256(beats).hexdigest()
    problem, = report["problems"]
    assert problem["path"] == str(weights / "mapper" / "learned_embeds.pth")
    assert "by hand" in problem["problem"] and problem["hint"] == "get it from the project page"

    (weights / "mapper").mkdir()
    (weights / "mapper" / "learned_embeds.pth").write_bytes(b"mapper weights")
    report = run()
    assert report["problems"] == [] and report["fetched"] == []
    assert (weights / "mapper" / "avtool-manifest.json").is_file()
    assert [entry for entry in hub.state.log if entry[1] == "/share/BEATs.pt"] == [("GET", "/share/BEATs.pt", None)]


def test_ctrl_c_keeps_the_partial_file_and_the_next_run_resumes(hub, tmp_path):
    weights = tmp_path / "weights"
    part = weights / "musicinfuser" / ".partial" / f"{hashlib.sha256(ADAPTER).hexdigest()}.part"
    hub.state.chunk_delay_s = 0.03
    env = {**os.environ, "PYTHONPATH": str(REPO), **hub.env}
    run = subprocess.Popen([sys.executable, "-m", "avtool", "download-weights", "musicinfuser", "--dir", str(weights)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size >= 10 * 2**20) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in stderr
    assert part.stat().st_size == 10 * 2**20
    assert not (weights / "musicinfuser" / "musicinfuser.safetensors").exists()

    hub.state.chunk_delay_s = 0
    result = fetch(hub, weights, "musicinfuser", "-q")
    assert result.returncode == 0, result.stderr
    assert hub.state.gets("musicinfuser.safetensors") == [None, f"bytes={10 * 2**20}-"]
    assert_installed(weights)


def test_unwritable_or_missing_folders_exit_2_naming_them(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    run = run_avtool("download-weights", "--tiny", "--dir", blocker / "sub")
    assert run.returncode == 2 and f"{blocker / 'sub'}: cannot write files there" in run.stderr
    run = run_avtool("download-weights", "--verify", "--dir", tmp_path / "nonexistent")
    assert run.returncode == 2 and "no such folder, nothing to verify" in run.stderr
    (tmp_path / "empty").mkdir()
    run = run_avtool("download-weights", "--verify", "--dir", tmp_path / "empty")
    assert run.returncode == 2 and "no downloaded model folder" in run.stderr
