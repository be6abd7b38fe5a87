"""AV-Align speed and memory: avtool vs a straightforward implementation with the reference's structure.

    python bench/eval.py [--seconds 60] [--short 15] [--files 4] [--size 854x480] [--fps 30]

Makes test videos (ffmpeg `testsrc2`, H.264) with a click track (.wav beside it, as TempoTokens' folders hold), then
runs each implementation in a fresh process and prints wall time, CPU time (all threads) per video frame, peak RSS
and the score:
- reference: read every frame with cv2 into a list, then loop Farneback pair by pair (TempoTokens `av_align.py`,
  2025 version), OpenCV with one thread (its Farneback runs on one core);
- avtool: `avtool.pipelines.eval.evaluate` (streaming cv2 decode, Farneback on a thread pool) with 1 worker and
  with every usable core.
The short video (same content, first `--short` seconds) shows how peak memory grows with length. Then `--files`
copies of the short video with the clicks muxed in: one `evaluate` of all of them against the sum of one run per file.
librosa's one-time JIT warm-up runs before the clock starts in every process. Other processes on the machine slow
every run: compare CPU per frame, and wall times only from runs made under the same load.
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
REFERENCE = "reference (single-threaded)"


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


def with_audio(folder: Path, video: Path, audio: Path, count: int) -> list[Path]:
    """`count` copies of `video` with `audio` muxed in (AAC), for a run over many files."""
    from avtool.media.ffmpeg import ffmpeg_exe

    copies = [folder / f"{video.stem}_{i + 1}.mp4" for i in range(count)]
    for path in copies:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", "-i", str(video), "-i", str(audio),
                        "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)
    return copies


def warm_up_librosa() -> None:
    import librosa
    import numpy as np

    y = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    librosa.onset.onset_detect(onset_envelope=librosa.onset.onset_strength(y=y, sr=22050), sr=22050)


def reference(video: Path, audio: Path) -> dict:
    """The reference's structure (librosa.load, all frames in a list, one Farneback after another), single-threaded."""
    import librosa
    from evalgen import reference_av_align

    y, sr = librosa.load(str(audio))
    score, trajectory, _ = reference_av_align(y, sr, video, "2025", single_threaded=True)
    # Its entries 0 and 1 are both flow(0→1) but cv2.magnitude can round them differently: frame 1 may become a peak.
    frame_1_peak = trajectory[0] < trajectory[1] > trajectory[2] and trajectory[1] >= 0.1
    return {"scores": [score], "frames": len(trajectory), "frame_1_peak": frame_1_peak}


def avtool(videos: list[Path], audio: Path | None, workers: int | None) -> dict:
    from avtool.pipelines.eval import EvalRequest, evaluate

    rows = evaluate(EvalRequest(files=videos, audio=audio, workers=workers))["files"]
    return {"scores": [row["scores"]["av-align"] for row in rows], "frames": sum(row["frames"] for row in rows)}


def child(args: argparse.Namespace) -> None:
    warm_up_librosa()
    start_wall, start_cpu = time.perf_counter(), os.times()
    result = reference(args.video[0], args.audio) if args.child == "reference" else avtool(args.video, args.audio, args.workers)
    end_cpu = os.times()
    print(json.dumps({
        **result,
        "wall_s": time.perf_counter() - start_wall,
        "cpu_s": (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def measure(kind: str, videos: list[Path], audio: Path | None, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *(f"--video={v}" for v in videos), *extra]
    cmd += [f"--audio={audio}"] if audio else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--short", type=float, default=15)
    parser.add_argument("--files", type=int, default=4, help="copies of the short video for the many-files run (0: none)")
    parser.add_argument("--size", default="854x480")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--child", choices=["reference", "avtool"], help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, action="append", help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    cores = len(os.sched_getaffinity(0))
    many = f"avtool, {cores} workers"
    print(f"AV-Align bench: {args.size} {args.fps} fps testsrc2 + click track; {cores} usable cores; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="avtool-bench-eval-") as tmp:
        runs: dict[float, dict[str, dict]] = {}
        for seconds in (args.short, args.seconds):
            video, audio = make_media(Path(tmp), seconds, args.size, args.fps)
            runs[seconds] = {REFERENCE: measure("reference", [video], audio),
                             "avtool, 1 worker": measure("avtool", [video], audio, "--workers=1"),
                             many: measure("avtool", [video], audio)}
            if seconds == args.short and args.files:
                copies = with_audio(Path(tmp), video, audio, args.files)
                singles = [measure("avtool", [path], None) for path in copies]
                together = measure("avtool", copies, None)

        print(f"{'video':>6}  {'implementation':<30}{'wall s':>8}{'cpu s':>8}{'cpu ms/frame':>14}{'peak RSS MiB':>14}  score")
        for seconds, by_name in runs.items():
            for name, r in by_name.items():
                print(f"{seconds:>5g}s  {name:<30}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}{1e3 * r['cpu_s'] / r['frames']:14.2f}"
                      f"{r['peak_rss_mib']:14.0f}  {r['scores'][0]:.12f}")
        for seconds, by_name in runs.items():
            base, one, fast = by_name[REFERENCE], by_name["avtool, 1 worker"], by_name[many]
            print(f"{seconds:g}s: avtool {cores} workers is {base['wall_s'] / fast['wall_s']:.2f}x faster than the reference "
                  f"({one['wall_s'] / fast['wall_s']:.2f}x its 1-worker time); CPU per frame vs the reference: "
                  f"1 worker {one['cpu_s'] / base['cpu_s']:.2f}x, {cores} workers {fast['cpu_s'] / base['cpu_s']:.2f}x; "
                  f"|score difference| = {abs(base['scores'][0] - fast['scores'][0]):.2e}")
            if base["frame_1_peak"]:
                print("  (the reference counted frame 1 as a peak: its two values of flow(0→1) differ in the last bits)")
        if args.files:
            total = sum(r["wall_s"] for r in singles)
            same = together["scores"] == [s for r in singles for s in r["scores"]]
            print(f"{args.files} files of {args.short:g}s: one call {together['wall_s']:.1f}s wall "
                  f"({1e3 * together['cpu_s'] / together['frames']:.2f} cpu ms/frame), one call per file {total:.1f}s in sum: "
                  f"{total / together['wall_s']:.2f}x; scores {'equal' if same else 'DIFFER'}")
        print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow every run)")


if __name__ == "__main__":
    main()
