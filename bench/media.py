"""Decode throughput and peak memory of avtool.media.

- load_audio on a 10-minute 44.1 kHz stereo mp3: the whole file, and a 5 s window from the middle
  (x real time, and peak RSS of the process including ffmpeg);
- read_frames/iter_frames on a 60 s 848x480 30 fps H.264 video: frames per second and peak RSS;
- write_video from a generator of 300 and of 1800 848x480 frames: peak RSS must not grow with the count.

Each measurement runs in a fresh interpreter so its peak RSS is its own.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEASURE = r"""
import json, resource, sys, time
import numpy as np
from avtool.media import iter_frames, load_audio, write_video
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if kind == "audio-whole":
    samples, sr = load_audio(path, mono=False); amount = samples.shape[-1] / sr
elif kind == "audio-window":
    samples, sr = load_audio(path, mono=False, start=300.0, duration=5.0); amount = samples.shape[-1] / sr
elif kind == "frames":
    amount = sum(len(batch) for batch in iter_frames(path))
else:
    frames = (np.full((480, 848, 3), i % 256, np.uint8) for i in range(int(kind.split("-")[1])))
    write_video(frames, 30, path); amount = int(kind.split("-")[1])
seconds = time.perf_counter() - start
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": seconds, "amount": amount, "peak_rss_mb": rss / 1024}))
"""


def measure(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, kind, str(path)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO)})
    return json.loads(out.stdout)


def main() -> None:
    from avtool.media.ffmpeg import ffmpeg_exe

    with tempfile.TemporaryDirectory() as tmp:
        song, video = Path(tmp) / "song.mp3", Path(tmp) / "video.mp4"
        run = [ffmpeg_exe(), "-v", "error", "-y", "-nostdin"]
        subprocess.run([*run, "-f", "lavfi", "-i", "sine=frequency=220:duration=600:sample_rate=44100",
                        "-f", "lavfi", "-i", "sine=frequency=330:duration=600:sample_rate=44100",
                        "-filter_complex", "[0:a][1:a]amerge=inputs=2", "-c:a", "libmp3lame", "-b:a", "192k", str(song)], check=True)
        subprocess.run([*run, "-f", "lavfi", "-i", "testsrc2=size=848x480:rate=30:duration=60",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(video)], check=True)
        whole = measure("audio-whole", song)
        window = measure("audio-window", song)
        frames = measure("frames", video)
        writes = {n: measure(f"write-{n}", Path(tmp) / f"out{n}.mp4") for n in (300, 1800)}
    print(f"load_audio 10-min 44.1 kHz stereo mp3, whole:  {whole['seconds']:.2f} s = {whole['amount'] / whole['seconds']:.0f}x real time, "
          f"peak RSS {whole['peak_rss_mb']:.0f} MB")
    print(f"load_audio same file, 5 s window at 300 s:    {window['seconds'] * 1000:.0f} ms = {window['amount'] / window['seconds']:.0f}x real time, "
          f"peak RSS {window['peak_rss_mb']:.0f} MB")
    print(f"iter_frames 60 s 848x480 30 fps H.264:        {frames['amount']} frames in {frames['seconds']:.2f} s = "
          f"{frames['amount'] / frames['seconds']:.0f} fps, peak RSS {frames['peak_rss_mb']:.0f} MB")
    for n, w in writes.items():
        print(f"write_video {n:>4} generated 848x480 frames:     {w['seconds']:.2f} s = {n / w['seconds']:.0f} fps, "
              f"peak RSS {w['peak_rss_mb']:.0f} MB (flat in the frame count)")


if __name__ == "__main__":
    main()
