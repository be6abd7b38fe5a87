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


@pytest.mark.parametrize("name", ["score", "animate", "tokens", "preprocess", "train"])
def test_unreleased_subcommands_exit_2_and_say_so(name):
    result = run_avtool(name)
    if "not available yet" not in result.stderr:
        pytest.skip(f"{name} has landed")
    assert result.returncode == 2
    assert f"error: {name} is not available yet" in result.stderr
    assert result.stdout == ""


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
    (["{song}", "--weights-dir", "{tmp}/nowhere"], 3, "download-weights mochi-1-preview musicinfuser --dir"),
    (["{song}", "--weights-dir", "{song}"], 3, "is a file, not a folder"),
    (["{song}", "--device", "cuda:0"], 2, "--device cuda:0"),
    (["{song}", "--device", "gpu"], 2, "expected auto, cpu, cuda"),
    (["{song}", "--seed", "18446744073709551616"], 2, "--seed 18446744073709551616"),
    (["{song}", "--shard", "3/2"], 2, "--shard 3/2"),
    (["{song}", "--generator", "gpu"], 2, "--generator gpu"),
    (["{song}", "--runner", "turbo"], 2, "--runner turbo"),
])
def test_dance_rejects_bad_input_options_and_weights_without_importing_torch(tmp_path, args, code, message):
    from mediagen import tone

    if "--device" in args and args[-1].startswith("cuda") and (Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()):
        pytest.skip("this machine has an NVIDIA driver")
    song = tone(tmp_path / "song.wav", seconds=1)
    argv = [a.format(song=song, tmp=tmp_path) for a in args]
    out = subprocess.run([sys.executable, "-c", REJECT_CHILD, "dance", *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == f"exit={code} heavy=", out.stderr
    assert message in out.stderr and len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1
