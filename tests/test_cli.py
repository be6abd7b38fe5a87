import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_avtool

SUBCOMMANDS = ["download-weights", "preprocess", "dance", "score", "animate", "tokens", "train", "eval"]
HEAVY = ["torch", "diffusers", "transformers", "librosa", "cv2", "decord"]


def test_help_lists_every_subcommand():
    result = run_avtool("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_version():
    result = run_avtool("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("avtool 0.")


def test_runs_as_module_and_console_script_entry():
    from avtool.cli import main

    assert callable(main)
    assert run_avtool("dance", "--help").returncode == 0


def test_cli_import_pulls_in_no_heavy_library():
    code = f"import sys, avtool.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_json_quiet_and_debug(name):
    result = run_avtool(name, "--help")
    assert result.returncode == 0
    for flag in ("--json", "--quiet", "--debug"):
        assert flag in result.stdout


@pytest.mark.parametrize("name", ["dance", "score", "animate", "tokens"])
def test_generation_commands_share_the_common_options(name):
    result = run_avtool(name, "--help")
    for flag in ("--output", "--output-dir", "--seed", "--steps", "--weights-dir", "--device", "--dtype", "--skip-existing"):
        assert flag in result.stdout


def test_unknown_option_is_a_usage_error():
    result = run_avtool("probe", "--no-such-option")
    assert result.returncode == 2


def test_bad_input_is_one_line_without_traceback(tmp_path):
    result = run_avtool("probe", tmp_path / "missing.mp3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {tmp_path / 'missing.mp3'}: no such file"
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_avtool("probe", tmp_path / "missing.mp3", "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "no such file" in result.stderr


def test_unexpected_exception_is_internal_error_exit_1(monkeypatch):
    from typer.testing import CliRunner

    import avtool.media
    from avtool.cli import app

    def broken(path):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(avtool.media, "probe", broken)
    result = CliRunner().invoke(app, ["probe", "x.mp4"])
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError: boom" in result.output


def test_keyboard_interrupt_exits_130(monkeypatch):
    from typer.testing import CliRunner

    import avtool.media
    from avtool.cli import app

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(avtool.media, "probe", interrupted)
    result = CliRunner().invoke(app, ["probe", "x.mp4"])
    assert result.exit_code == 130
    assert "error: interrupted" in result.output


REJECT_CHILD = """
import sys
from pathlib import Path
from avtool.cli import main
sys.argv = ["avtool", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    print(f"exit={exit.code} heavy={','.join(heavy)}")
"""


@pytest.mark.parametrize(("args", "code", "message"), [
    (["missing.mp3"], 2, "missing.mp3: no such file"),
    (["{song}", "--num-frames", "14"], 2, "nearest valid: 13 or 19"),
    (["{song}", "--num-frames", "1"], 2, "6k+1 from 7 to 997"),
    (["{song}", "--weights-dir", "{tmp}/nowhere"], 3, "nowhere: no such weights folder"),
    (["{song}", "--weights-dir", "{tmp}/empty"], 3, "missing weights: "),
    (["{song}", "--weights-dir", "{song}"], 2, "is a file, not a folder"),
    (["{song}", "--device", "cuda:0"], 2, "--device cuda:0"),
    (["{song}", "--device", "gpu"], 2, "expected auto, cpu, cuda"),
    (["{song}", "--seed", "18446744073709551616"], 2, "--seed 18446744073709551616"),
    (["{song}", "--shard", "3/2"], 2, "--shard 3/2"),
    (["{song}", "--generator", "gpu"], 2, "--generator gpu"),
    (["{song}", "--runner", "turbo"], 2, "--runner turbo"),
    (["{song}", "--fps", "inf"], 2, "--fps inf: must be from 1 to 240"),
    (["{song}", "--fps", "1e-9"], 2, "--fps 1e-09"),
    (["{song}", "--start", "nan"], 2, "--start nan"),
    (["{song}", "--steps", "1000000000"], 2, "must be from 2 to 1000"),
    (["{song}", "--height", "160000"], 2, "from 16 to 4096"),
    (["{song}", "--num-frames", "abc"], 2, "Invalid value for '--num-frames'"),
    (["{song}", "--no-such-option"], 2, "No such option: --no-such-option"),
    (["{song}", "--weights-dir", "{weights}", "-o", "{song}"], 2, "this command writes .mp4 files"),
    (["{clip}", "--weights-dir", "{weights}", "-o", "{clip}"], 2, "is the input"),
    (["{clip}", "--weights-dir", "{weights}", "-o", "{link}"], 2, "is the input"),
    (["{song}", "--weights-dir", "{weights}", "-o", "{taken}"], 2, "taken.mp4: exists"),
    (["{song}", "--weights-dir", "{weights}", "-o", "{taken}", "--overwrite", "--num-frames", "997", "--height", "4096",
      "--width", "4096"], 2, "this run needs about"),
    (["{song}", "--weights-dir", "{weights}", "-o", "{tmp}/sidecar.mp4"], 2, "sidecar.mp4.json: is a folder"),
])
def test_dance_rejects_bad_input_options_and_weights_without_importing_torch(tiny_weights, tmp_path, args, code, message):
    from mediagen import clip, tone

    if "--device" in args and args[-1].startswith("cuda") and (Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()):
        pytest.skip("this machine has an NVIDIA driver")
    song, video = tone(tmp_path / "song.wav", seconds=1), clip(tmp_path / "clip.mp4", seconds=1)
    (tmp_path / "link.mp4").symlink_to(video)
    (tmp_path / "taken.mp4").write_bytes(b"someone else's video")
    (tmp_path / "sidecar.mp4.json").mkdir()
    (tmp_path / "empty").mkdir()
    argv = [a.format(song=song, clip=video, link=tmp_path / "link.mp4", taken=tmp_path / "taken.mp4", tmp=tmp_path,
                     weights=tiny_weights) for a in args]
    out = subprocess.run([sys.executable, "-c", REJECT_CHILD, "dance", *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == f"exit={code} heavy=", out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "╭" not in out.stderr, out.stderr
    if code == 3:  # every missing model in one hint, with the user's own folder
        assert f"hint: run: avtool download-weights mochi-1-preview musicinfuser --dir {tmp_path}/" in out.stderr
    assert (tmp_path / "taken.mp4").read_bytes() == b"someone else's video" and video.stat().st_size > 1000


def test_output_ending_in_a_slash_is_a_folder(tiny_weights, tmp_path):
    from mediagen import tone

    song = tone(tmp_path / "song.wav", seconds=1)
    run = run_avtool("dance", song, "--weights-dir", tiny_weights, "--num-frames", "7", "--steps", "2", "--seed", "1", "-q",
                     "-o", f"{tmp_path / 'videos'}/")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["song_generated.mp4", "song_generated.mp4.json"]
