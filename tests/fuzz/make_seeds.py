"""Write the fuzz corpus' seed files: tiny media in every container probe meets, made with the bundled ffmpeg.

    .venv/bin/python tests/fuzz/make_seeds.py [FOLDER]   (default: tests/data/fuzz_corpus)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from avtool.media.ffmpeg import ffmpeg_exe

TONE = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000:duration=0.2"]
PATTERN = ["-f", "lavfi", "-i", "testsrc=size=16x16:rate=5:duration=0.4"]
H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]
SEEDS: dict[str, list[str]] = {
    "seed.wav": [*TONE, "-c:a", "pcm_u8"],
    "seed.mp3": [*TONE, "-c:a", "libmp3lame", "-b:a", "8k"],
    "seed.mp4": [*PATTERN, *TONE, *H264, "-c:a", "aac", "-b:a", "8k", "-shortest"],
    "seed.mkv": [*PATTERN, *TONE, *H264, "-c:a", "libvorbis", "-shortest"],
    "seed.webm": [*PATTERN, *TONE, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", "-b:a", "6k", "-shortest"],
    "seed.png": ["-f", "lavfi", "-i", "testsrc=size=8x6:rate=1:duration=1", "-frames:v", "1"],
    "seed-8x6.mp4": ["-f", "lavfi", "-i", "testsrc=size=8x6:rate=5:duration=0.4", "-c:v", "libx264", "-preset", "ultrafast"],
    "seed-late-audio.mp4": [*PATTERN, "-itsoffset", "0.2", *TONE, *H264, "-c:a", "aac", "-b:a", "8k"],
    "seed.flac": [*TONE],
    "seed.ogg": [*TONE, "-c:a", "libvorbis"],
    "seed.m4a": [*TONE, "-c:a", "aac", "-b:a", "8k"],
    "seed-5.1.wav": [*TONE, "-ac", "6", "-c:a", "pcm_u8"],
    "seed.ts": [*PATTERN, *TONE, *H264, "-c:a", "mp2", "-shortest"],
    "seed-cover.mp3": [*TONE, "-f", "lavfi", "-i", "color=size=8x8:duration=0.04", "-map", "0", "-map", "1",
                       "-c:a", "libmp3lame", "-b:a", "8k", "-c:v", "png", "-disposition:v", "attached_pic"],
    "seed-subtitles.mkv": ["-f", "lavfi", "-i", "anullsrc=d=0.1", "-f", "srt", "-i", "pipe:0", "-map", "1", "-c:s", "srt"],
}
SRT = b"1\n00:00:00,000 --> 00:00:00,100\nhi\n"  # the subtitle-only seed's input


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, args in SEEDS.items():
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", *args, "-map_metadata", "-1",
                        "-fflags", "+bitexact", str(folder / name)], input=SRT, check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "fuzz_corpus")
