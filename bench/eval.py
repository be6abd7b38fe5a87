"""AV-Align speed and memory: avtool vs a straightforward implementation with the reference's structure.

    python bench/eval.py [--seconds 60] [--short 15] [--size 854x480] [--fps 30]

Makes a test video (ffmpeg `testsrc2`, H.264) with a click track (.wav beside it, as TempoTokens' folders hold), then
runs each implementation in a fresh process and prints wall time, CPU time, peak RSS and the score:
- reference: read every frame with cv2 into a list, then loop Farneback pair by pair (TempoTokens `av_align.py`,
  2025 version), OpenCV with its default thread pool (its Farneback runs on one core);
- avtool: `avtool.pipelines.eval.evaluate` (streaming cv2 decode, Farneback on a thread pool), with every usable
  core, and with one worker on the long video.
The short video (same content, first `--short` seconds) shows how peak memory grows with length.
librosa's one-time JIT warm-up runs before the clock starts in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # evalgen: the reference implementation the tests compare against


def make_media(folder: Path, seconds: float, size: str, fps: int) -> tuple[Path, Path]:
    from avtool.media.ffmpeg import ffmpeg_exe

    video, audio = folder / f"bench{seconds:g}.mp4", folder / f"bench{seconds:g}.wav"
    run = [ffmpeg_exe(), "-hide_banner", "-v", "error", "-y"]
    subprocess.run([*run, "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(video)], check=True)
    # a click every 0.37 s and a louder one every 1.1 s
    clicks = "0.6*exp(-300*mod(t\\,0.37))*sin(2*PI*900*t)+0.9*exp(-300*mod(t\\,1.1))*sin(2*PI*300*t)"
    subprocess.run([*run, "-f", "lavfi", "-i", f"aevalsrc={clicks}:s=44100:d={seconds}", str(audio)], check=True)
    return video, audio


def warm_up_librosa() -> None:
    import librosa
    import numpy as np

    y = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    librosa.onset.onset_detect(onset_envelope=librosa.onset.onset_strength(y=y, sr=22050), sr=22050)


def reference(video: Path, audio: Path) -> float:
    """The reference's structure (librosa.load, all frames in a list, one Farneback after another), single-threaded."""
    import librosa
    from evalgen import reference_av_align

    y, sr = librosa.load(str(audio))
    return reference_av_align(y, sr, video, "2025", single_threaded=True)[0]


def avtool(video: Path, audio: Path, workers: int | None) -> float:
    from avtool.pipelines.eval import EvalRequest, evaluate

    return evaluate(EvalRequest(files=[video], audio=audio, workers=workers))["files"][0]["scores"]["av-align"]


def child(args: argparse.Namespace) -> None:
    warm_up_librosa()
    start_wall, start_cpu = time.perf_counter(), os.times()
    score = reference(args.video, args.audio) if args.child == "reference" else avtool(args.video, args.audio, args.workers)
    end_cpu = os.times()
    print(json.dumps({
        "score": score,
        "wall_s": time.perf_counter() - start_wall,
        "cpu_s": (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def measure(kind: str, video: Path, audio: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--video", str(video), "--audio", str(audio), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--short", type=float, default=15)
    parser.add_argument("--size", default="854x480")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--child", choices=["reference", "avtool"], help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    cores = len(os.sched_getaffinity(0))
    print(f"AV-Align bench: {args.size} {args.fps} fps testsrc2 + click track; {cores} usable cores; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="avtool-bench-eval-") as tmp:
        runs = []
        for seconds in (args.short, args.seconds):
            video, audio = make_media(Path(tmp), seconds, args.size, args.fps)
            runs.append((seconds, "reference (single-threaded)", measure("reference", video, audio)))
            if seconds == args.seconds:
                runs.append((seconds, "avtool, 1 worker", measure("avtool", video, audio, "--workers", "1")))
            runs.append((seconds, f"avtool, {cores} workers", measure("avtool", video, audio)))
        print(f"{'video':>6}  {'implementation':<36}{'wall s':>8}{'cpu s':>8}{'peak RSS MiB':>14}  score")
        for seconds, name, r in runs:
            print(f"{seconds:>5g}s  {name:<36}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}{r['peak_rss_mib']:14.0f}  {r['score']:.12f}")
        for seconds in (args.short, args.seconds):
            by_name = {name: r for s, name, r in runs if s == seconds}
            base = by_name["reference (single-threaded)"]
            fast = by_name[f"avtool, {cores} workers"]
            print(f"{seconds:g}s: avtool {cores} workers is {base['wall_s'] / fast['wall_s']:.2f}x faster than the reference; "
                  f"|score difference| = {abs(base['score'] - fast['score']):.2e}")
        print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow every run)")


if __name__ == "__main__":
    main()
