import subprocess
import sys

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
