"""Download throughput of `download-weights` (fetch + verify + place) against a local fake hub, next to
huggingface_hub's own hf_hub_download of the same file, and the hashing rate of the verification.

Loopback only, so the figures are the tool's own overhead (HTTP client, disk writes, sha256), not a network.
Run: python bench/weights_download.py [MiB]   (default 512)
"""

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hubserver import FakeHub, HubState, Repo  # noqa: E402


def serve(payload: bytes, urls: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """The fake hub in its own process, so that server and client do not share one interpreter lock."""
    state = HubState(repos={"susunghong/MusicInfuser": Repo({"musicinfuser.safetensors": payload})})
    with FakeHub(state) as hub:
        urls.put(hub.url)
        stop.wait(timeout=600)


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    payload = os.urandom(mib * 2**20)
    urls, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(payload, urls, stop), daemon=True)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(HF_ENDPOINT=urls.get(timeout=60), HF_HOME=f"{tmp}/hf", HF_HUB_OFFLINE="0",
                          HF_HUB_DISABLE_PROGRESS_BARS="1")
        from huggingface_hub import hf_hub_download

        from avtool.weights.download import Installer, Report
        from avtool.weights.manifest import digests
        from avtool.weights.registry import Component, Model

        model = Model("musicinfuser", (Component("musicinfuser", repo="susunghong/MusicInfuser",
                                                 allow=("musicinfuser.safetensors",), approx_gb=0, licence=""),), ())
        start = time.perf_counter()
        report = Report()
        Installer(Path(tmp) / "weights", report, lambda m: None).install(model)
        ours = time.perf_counter() - start
        assert not report.problems and report.fetched[0]["bytes"] == len(payload), report.problems

        start = time.perf_counter()
        hf_hub_download("susunghong/MusicInfuser", "musicinfuser.safetensors", cache_dir=f"{tmp}/baseline")
        baseline = time.perf_counter() - start

        target = Path(tmp) / "weights" / "musicinfuser" / "musicinfuser.safetensors"
        start = time.perf_counter()
        digests(target)
        sha256_only = time.perf_counter() - start
        start = time.perf_counter()
        digests(target, git_blob=True)
        both = time.perf_counter() - start
    stop.set()
    server.join(timeout=10)

    print(f"file: {mib} MiB over 127.0.0.1, {os.cpu_count()} CPUs")
    print(f"download-weights (fetch + sha256 + place + manifest): {ours:6.2f} s  {mib / ours:7.1f} MiB/s")
    print(f"huggingface_hub hf_hub_download (fetch, no hash):     {baseline:6.2f} s  {mib / baseline:7.1f} MiB/s")
    print(f"sha256 of the file:                                   {sha256_only:6.2f} s  {mib / sha256_only:7.1f} MiB/s")
    print(f"sha256 + git blob sha1 in one read:                   {both:6.2f} s  {mib / both:7.1f} MiB/s")


if __name__ == "__main__":
    main()
