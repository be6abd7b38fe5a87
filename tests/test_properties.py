"""Property-based tests: every subcommand's options through the CLI with extreme, malformed and unicode values.

An example takes one of a command's BASES (valid, quick arguments), sets ONE option to a drawn value (or removes it),
runs the CLI in-process in a fresh sandbox folder and checks what every run keeps, whatever it is given:

- the exit code is 0, 2 (bad input or options) or 3 (weights): never 1 (our bug), never an escaped exception;
- a failure prints exactly one `error:` line (with several inputs: at least one, a line per failed input and
  a summary) and no traceback; a success prints none;
- a failure leaves no new file; a success leaves no temporary file (hidden, or `.partial`), and every file
  dance and eval write comes with its sidecar; the files that were there (the inputs) are untouched.

A new subcommand is one more COMMANDS entry (its options and their values) and one BASES entry.

`dance` is checked up to its job plan (inputs probed, weights and memory checked, outputs checked) with a base
`--shard` whose share has no job, so that no model loads; `test_dance_renders_extreme_valid_values` renders a
few videos with values at the edge of what is valid.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from avtool.cli import main

# --------------------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class File:
    """A path argument: a file of `kind` made in the sandbox under `name`, written as `prefix + name`
    (prefix "abs": the absolute path). Kinds: a `sources` key, "empty", "folder" or "missing"."""

    kind: str
    name: str
    prefix: str = ""

    def make(self, sandbox: Path, sources: dict[str, Path]) -> str:
        path = sandbox / self.name
        if path.exists() or path.is_symlink():
            pass  # an earlier argument made it
        elif self.kind in sources:
            shutil.copyfile(sources[self.kind], path)
        elif self.kind == "empty":
            path.touch()
        elif self.kind == "folder":
            path.mkdir()
        return str(path) if self.prefix == "abs" else self.prefix + self.name


FLAG = "<flag>"  # the option alone, without a value
REMOVE = "<remove>"  # drop the option from the base arguments
WEIGHTS = "<weights>"  # the tiny_weights folder
MANIFESTED = "<manifested>"  # tiny musicinfuser weights as download-weights writes them (with manifests)

TEXT = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))  # what a shell can pass in argv
MALFORMED = st.sampled_from(["", " ", "x", "1,5", "1e", "0x10", "٣", "1_0", "-", "--", "--json", "\n", "½"])
int_values = st.one_of(
    st.sampled_from([0, 1, -1, 2, 7, 13, 16, 997, 1000, 1001, 4096, 2**31, 2**63, -(2**63), 10**40]).map(str),
    st.integers().map(str),
    MALFORMED,
)
float_values = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-300, 5e-324, 1e300, 0.5, 1.0, 240.0, 1000.0]).map(repr),
    st.sampled_from(["NaN", "-nan", "Infinity", "1e309", "-1e-309", "1E2", " 30 ", "30."]),
    st.floats().map(repr),
    MALFORMED,
)
strings = st.one_of(
    st.sampled_from(["", " ", "\n", "é", "日本語", "[/]", "[bold]x[/bold]", "\u202e", "a" * 5000, "\udcff", "%s", "{}"]),
    st.text(TEXT, max_size=30),
)

NAME_PARTS = st.sampled_from([
    "song", " ", "-", "--x", ":", "|", "\n", "file:", "concat:", "pipe:", "subfile,,", "é", "日本", "[/]", "[red]", "%d",
    "*", "?", "'", '"', "\\", "\t", "~", "$HOME", "\udcff", "\u202e", ".", "Duration: 01:00:00.00", "Output #0",
    "\n  Stream #0:0: Video: h264, yuv420p, 16x16, 25 fps", "\n  Stream #0:0: Audio: pcm_s16le, 1 Hz, mono",
])


def _usable_name(name: str) -> bool:
    return "/" not in name and "\x00" not in name and name not in (".", "..") and len(os.fsencode(name)) <= 200


def names(ext: str) -> st.SearchStrategy[str]:
    """Weird file names: spaces, leading dashes, colons, pipes, newlines, protocol prefixes, markup, bad bytes."""
    parts = st.lists(st.one_of(NAME_PARTS, st.text(TEXT, min_size=1, max_size=4)), min_size=1, max_size=3)
    exts = st.sampled_from([ext, ext, ext.upper(), ""]) if ext else st.just("")
    return st.builds(lambda p, e: "".join(p) + e, parts, exts).filter(_usable_name)


def files(kinds: list[str], ext: str = "") -> st.SearchStrategy[File]:
    return st.builds(File, st.sampled_from(kinds), names(ext), st.sampled_from(["", "./", "abs"]))


SPECIAL_PATHS = st.sampled_from(["", ".", "..", "/dev/null", "/proc/self/no/such/x", "~", "-"])
MEDIA_KINDS = ["tone", "clip", "empty", "text", "folder", "missing"]


def paths(ext: str = "", kinds: list[str] = MEDIA_KINDS) -> st.SearchStrategy:
    return st.one_of(files(kinds, ext), SPECIAL_PATHS)


def inputs(ext: str, kinds: list[str] = MEDIA_KINDS) -> st.SearchStrategy[list]:
    return st.lists(paths(ext, kinds), max_size=2)


flag = st.just(FLAG)
GENERATION_OPTIONS = {
    "-o": paths(".mp4"), "--output-dir": paths(), "--seed": int_values, "--steps": int_values,
    "--weights-dir": paths(), "--device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:-1", "cuda:99999999999999999999", "CPU", "mps", "cpu:0"]), strings),
    "--dtype": st.one_of(st.sampled_from(["fp32", "bf16", "fp16", "FP32", "float32", "int8"]), strings),
    "--generator": st.one_of(st.sampled_from(["cpu", "device", "cuda"]), strings),
    "--shard": st.one_of(st.sampled_from(["0/0", "1/0", "0/1", "-1/2", "2/1", "1/2/3", "١/٠", "99999999999999999999/1", ""]), strings),
    "--skip-existing": flag, "--overwrite": flag, "--keep-going": flag,
}
OUTPUT_OPTIONS = {"--json": flag, "-q": flag}  # --debug prints tracebacks by design

COMMANDS: dict[str, dict[str, st.SearchStrategy]] = {
    "dance": {
        "inputs": inputs(".wav"), "--prompt": strings, "--num-frames": int_values, "--cfg-scale": float_values,
        "--fps": float_values, "--height": int_values, "--width": int_values, "--start": float_values,
        "--runner": st.one_of(st.sampled_from(["eager", "compile", "cuda-graph", "EAGER"]), strings), "--tiling": flag,
        **GENERATION_OPTIONS, **OUTPUT_OPTIONS,
    },
    "score": {
        "inputs": st.one_of(inputs(".mp4"), inputs(".npy", [*MEDIA_KINDS, "motion"])),
        "--model": st.one_of(st.sampled_from(["vidmuse", "d2m", "VidMuse"]), strings),
        "--duration": float_values, "--top-k": int_values, "--top-p": float_values, "--temperature": float_values,
        "--cfg-scale": float_values, "--runner": st.one_of(st.sampled_from(["eager", "compile", "cuda-graph"]), strings),
        "--checkpoint": paths(), "--video": paths(".mp4"), "--decode-steps": int_values,
        **GENERATION_OPTIONS, **OUTPUT_OPTIONS,
    },
    "animate": {
        "--image": paths(".png"), "--prompt": strings, "--negative-prompt": strings, "--pose-video": paths(".mp4"),
        "--variant": st.one_of(st.sampled_from(["musev", "musev_referencenet", "musev_referencenet_pose", "MuseV"]), strings),
        "--time-size": int_values, "--n-batch": int_values, "--guidance": float_values, "--fps": float_values,
        "--height": int_values, "--width": int_values, "--img-length-ratio": float_values, "--context-frames": int_values,
        "--context-overlap": int_values, "--context-batch-size": int_values, "--motion-speed": float_values,
        "--w-ind-noise": float_values, "--img-weight": float_values, "--task-file": paths(".yaml"), "--target": strings,
        **GENERATION_OPTIONS, **OUTPUT_OPTIONS,
    },
    "tokens": {
        "inputs": inputs(".wav"), "--mapper": st.one_of(st.sampled_from(["vggsound", "landscape", "audioset_drum", "VGGSound", "x.pth"]), strings),
        "--prompt": strings, "--negative-prompt": strings, "--guidance": float_values, "--num-frames": int_values,
        "--fps": float_values, "--height": int_values, "--width": int_values, "--start": float_values, "--duration": float_values,
        "--window-size": int_values, "--vae-batch-size": int_values, "--pool-dropout": float_values,
        "--runner": st.one_of(st.sampled_from(["eager", "compile", "cuda-graph"]), strings),
        **GENERATION_OPTIONS, **OUTPUT_OPTIONS,
    },
    "probe": {
        "inputs": inputs(".wav"), "--require": st.one_of(st.sampled_from(["audio", "video", "AUDIO", "subtitle"]), strings),
        **OUTPUT_OPTIONS,
    },
    "eval": {
        "inputs": inputs(".mp4"), "--audio": paths(".wav"),
        "--metric": st.one_of(st.sampled_from(["all", "av-align", "av-align-2023", "beat-coverage", "beat-hit-d2m", "bas", "ALL"]), strings),
        "--reference-audio": paths(".wav"), "--joints": paths(".npy", [*MEDIA_KINDS, "joints"]), "--motion-fps": float_values,
        "--plot": paths(".png"), **OUTPUT_OPTIONS,
    },
    "download-weights": {
        "inputs": st.lists(st.one_of(st.sampled_from(["musicinfuser", "mochi-1-preview", "vidmuse", "d2m", "all", "MusicInfuser"]), strings), max_size=2),
        "--dir": paths(), "--dry-run": flag, "--verify": flag, "--tiny": flag, "--revision": strings,
        "--variant": st.one_of(st.sampled_from(["bf16", "fp16", "fp32"]), strings), **OUTPUT_OPTIONS,
    },
}

# Valid, quick arguments the examples start from (several where options only matter together).
DANCE_BASE = {"inputs": [File("tone", "song.wav")], "--num-frames": "7", "--steps": "2", "--seed": "1",
              "--weights-dir": WEIGHTS, "--output-dir": "out"}
CLIP = File("clip", "clip.mp4")
BASES: dict[str, list[dict]] = {
    "dance": [{**DANCE_BASE, "--shard": "3/3"}],  # shard 3 of 3 of at most two jobs: none, so no model loads
    "score": [{"inputs": [CLIP], "--seed": "1", "--weights-dir": WEIGHTS, "--output-dir": "out", "--shard": "2/2"},
              {"inputs": [File("motion", "dance.npy")], "--model": "d2m", "--seed": "1", "--weights-dir": WEIGHTS,
               "--output-dir": "out", "--shard": "2/2"}],
    "animate": [{"--prompt": "a face", "--time-size": "4", "--steps": "1", "--first-frame-steps": "1", "--seed": "1",
                 "--weights-dir": WEIGHTS, "--output-dir": "out", "--shard": "2/2"}],  # a drawn --shard renders 5 frames
    "tokens": [{"inputs": [File("tone", "song.wav")], "--duration": "1", "--steps": "1", "--seed": "1", "--weights-dir": WEIGHTS,
                "--output-dir": "out", "--shard": "2/2"}],  # a drawn --shard that gives a job renders 12 frames in 1 step
    "probe": [{"inputs": [File("tone", "song.wav")]}],
    "eval": [{"inputs": [CLIP]}, {"inputs": [CLIP], "--joints": File("joints", "joints.npy"), "--metric": "bas"},
             {"inputs": [CLIP], "--reference-audio": File("tone", "song.wav"), "--metric": "all"}],
    "download-weights": [{"inputs": ["musicinfuser"], "--dir": "weights", "--tiny": FLAG, "--dry-run": FLAG},
                         {"--dir": MANIFESTED, "--verify": FLAG}],
}
WRITES_SIDECARS = {"dance", "score", "tokens", "animate", "eval"}
MANY_PROBLEMS = {"download-weights"}  # reports every problem of a run (e.g. each file it cannot fetch), a line each


def perturbations(command: str, base: dict) -> st.SearchStrategy[tuple[str, object]]:
    """(option, value) pairs for `command`; options of the base can also be removed."""
    return st.one_of([
        st.tuples(st.just(option), st.one_of(values, st.just(REMOVE)) if option in base else values)
        for option, values in COMMANDS[command].items()
    ])


# --------------------------------------------------------------------------------------------------------------
# Running


@pytest.fixture(scope="session")
def weights(tiny_weights, tmp_path_factory) -> dict[str, Path]:
    """The weight folders the bases name: tiny_weights, and tiny musicinfuser weights with their manifests."""
    manifested = tmp_path_factory.mktemp("manifested")
    assert run_cli(["download-weights", "musicinfuser", "--tiny", "--dir", str(manifested), "-q"], manifested).code == 0
    return {WEIGHTS: tiny_weights, MANIFESTED: manifested}


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One file of each kind the sandboxes copy (a 1 s tone, a 1 s video with sound, ...), made once."""
    from mediagen import clip, tone

    folder = tmp_path_factory.mktemp("sources")
    joints = folder / "joints.npy"
    np.save(joints, np.random.default_rng(0).normal(size=(20, 24, 3)).astype(np.float32))
    (folder / "text.txt").write_text("not media\n")
    np.save(folder / "motion.npy", np.random.default_rng(1).normal(size=(360, 219)).astype(np.float32))  # one D2M window
    return {
        "tone": tone(folder / "tone.wav", seconds=1), "tone16k": tone(folder / "tone16k.wav", seconds=1, sr=16000),
        "clip": clip(folder / "clip.mp4", seconds=1, fps=10, size="32x24"), "joints": joints, "text": folder / "text.txt",
        "motion": folder / "motion.npy",
    }


@dataclass
class Run:
    argv: list[str]
    code: int
    stdout: str
    stderr: str


LAUNCHER_VARIABLES = ("AVTOOL_WEIGHTS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID")


def run_cli(argv: list[str], cwd: Path) -> Run:
    """`avtool ARGV` in this process, in `cwd`: the exit code and what it printed. An exception that escapes the CLI
    is printed as a real run would print it, with exit code 1."""
    stdout, stderr = io.StringIO(), io.StringIO()
    stops = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    environ = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with mock.patch.object(sys, "argv", ["avtool", *argv]), mock.patch.dict(os.environ, environ, clear=True), \
                redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                main()
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        for signum, handler in stops.items():  # the CLI turns stop signals into exceptions
            signal.signal(signum, handler)
    return Run(argv, code, stdout.getvalue(), stderr.getvalue())


def without_removed(args: dict) -> dict:
    return {name: item for name, item in args.items() if item is not REMOVE}


def build_argv(command: str, args: dict, sandbox: Path, sources: dict[str, Path], weights: dict[str, Path]) -> list[str]:
    """The command line of `args` (option -> value; "inputs": the positional arguments), every File made in the sandbox."""

    def resolve(item: object) -> str:
        if isinstance(item, File):
            return item.make(sandbox, sources)
        return str(weights.get(item, item))

    argv = [command, *map(resolve, args.get("inputs", []))]
    for name, item in args.items():
        if name != "inputs":
            argv += [name] if item is FLAG else [name, resolve(item)]
    return argv


def files_in(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def check_run(command: str, run: Run, before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]],
              many: bool = False, outputs: frozenset[Path] = frozenset()) -> None:
    """Everything a run keeps, whatever its arguments (see the module's docstring). `many`: it has several inputs;
    `outputs`: files it was told to write (-o, --plot), which it may replace when it succeeds."""
    said = f"avtool {run.argv!r}\nexit {run.code}\nstderr:\n{run.stderr}"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.code in (0, 2, 3), said
    assert "Traceback" not in run.stderr, said
    if run.code == 0:
        assert not errors, said
    elif many or command in MANY_PROBLEMS:
        assert errors, said
    else:
        assert len(errors) == 1, said
    changed = {p for p in before if after.get(p) != before[p]}
    written = (set(after) - set(before)) | (changed & outputs if run.code == 0 else set())
    assert changed <= written, f"it changed {sorted(map(str, changed - written))}\n{said}"
    if run.code != 0:
        assert not written, f"a failed run left {sorted(map(str, written))}\n{said}"
    for path in written:
        paired = path.with_name(path.name + ".json") in written or (path.suffix == ".json" and path.with_suffix("") in written)
        assert ".partial" not in path.name and (paired or not path.name.startswith(".")), f"temporary file {path}\n{said}"
        assert paired or command not in WRITES_SIDECARS, f"{path} without its sidecar\n{said}"


OUTPUT_FILE_OPTIONS = ("-o", "--plot")


def run_example(command: str, base: dict, option: str, value: object, root: Path, sources: dict[str, Path],
                weights: dict[str, Path], log: Callable[[str], None] = note) -> Run:
    """Make a fresh sandbox under `root`, run the CLI there and check the run (`log`: where the command line goes)."""
    sandbox = Path(tempfile.mkdtemp(dir=root))
    args = without_removed({**base, option: value})
    argv = build_argv(command, args, sandbox, sources, weights)
    log(f"avtool {argv!r}")
    before = files_in(sandbox)
    run = run_cli(argv, sandbox)
    outputs = frozenset(sandbox / args[o].name for o in OUTPUT_FILE_OPTIONS if isinstance(args.get(o), File))
    check_run(command, run, before, files_in(sandbox), len(args.get("inputs", [])) > 1, outputs)
    shutil.rmtree(sandbox)
    return run


# --------------------------------------------------------------------------------------------------------------
# Tests

# No shrinking: an example changes one option already, and shrinking a failure would rerun the CLI for minutes.
PROPERTY_SETTINGS = settings(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
EXAMPLES = {"dance": 150, "score": 100, "tokens": 60, "animate": 60, "probe": 100, "eval": 80, "download-weights": 100}


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_keeps_its_conventions_whatever_the_options(command, sources, weights, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"sandboxes-{command}")

    @settings(PROPERTY_SETTINGS, max_examples=EXAMPLES[command])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        base = data.draw(st.sampled_from(BASES[command]), label="base")
        option, value = data.draw(perturbations(command, base), label="option, value")
        run_example(command, base, option, value, root, sources, weights)

    check()


# Valid values at the edges: each example renders a 7-frame video with the tiny weights (seconds), so a few.
DANCE_EDGES: dict[str, st.SearchStrategy] = {
    "inputs": st.lists(files(["tone"], ".wav"), min_size=1, max_size=1),
    "-o": files(["missing"], ".mp4"),
    "--output-dir": files(["missing"]),
    "--fps": st.sampled_from(["1", "240", "29.97", "1e-0"]),
    "--start": st.sampled_from(["0", "0.6", "-0.0"]),
    "--prompt": strings,
    "--cfg-scale": st.sampled_from(["0", "100", "1e-300"]),
    "--height": st.just("16"),
}


@settings(PROPERTY_SETTINGS, max_examples=6)
@given(perturbation=st.one_of([st.tuples(st.just(option), values) for option, values in DANCE_EDGES.items()]))
def test_dance_renders_extreme_valid_values(perturbation, sources, weights, tmp_path_factory):
    option, value = perturbation
    run = run_example("dance", DANCE_BASE, option, value, tmp_path_factory.mktemp("render"), sources, weights)
    assert run.code == 0, run.stderr


@settings(PROPERTY_SETTINGS, max_examples=30)
@given(name=names(".mkv"), title=st.one_of(NAME_PARTS, st.text(TEXT, max_size=20)))
@example(name="\x01\n  Stream #0:0: Audio: pcm_s16le, 1 Hz, mono.mkv", title="")  # ffmpeg prints \x01 as ?
def test_probe_reads_a_file_the_same_whatever_its_name_and_title(name, title, sources, tmp_path_factory):
    """ffmpeg's banner quotes the file's name and metadata: neither may pass for a stream line or a duration."""
    from mediagen import ffmpeg

    from avtool.media import probe
    from avtool.media.ffmpeg import file_url

    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    plain, named = folder / "plain.mkv", folder / name
    for path, tags in ((plain, []), (named, ["-metadata", f"title={title}"])):
        ffmpeg("-i", file_url(sources["clip"]), "-c", "copy", *tags, "-f", "matroska", file_url(path))
    assert dataclasses.replace(probe(named), path=plain) == probe(plain)
    shutil.rmtree(folder)


# Cases that once broke a convention, found by the tests above: pinned, so that they stay fixed.
PINNED = [  # command, base, option, value
    pytest.param("probe", BASES["probe"][0], "inputs", [File("missing", "x[/]y.wav")], id="markup-in-error-line"),
    pytest.param("dance", {**DANCE_BASE, "--output-dir": "o["}, "inputs", [File("tone", "x].wav")], id="markup-in-message"),
    pytest.param("dance", DANCE_BASE, "inputs", [File("tone16k", "song16k.wav")], id="dance-16khz-song"),
    pytest.param("dance", DANCE_BASE, "--fps", "240", id="dance-fps-240"),
    pytest.param("eval", BASES["eval"][0], "--plot", File("missing", "plot.png"), id="eval-plot"),
    pytest.param("eval", BASES["eval"][1], "--motion-fps", "inf", id="eval-joints-motion-fps-inf"),
]


@pytest.mark.parametrize(("command", "base", "option", "value"), PINNED)
def test_pinned_cases(command, base, option, value, sources, weights, tmp_path):
    run_example(command, base, option, value, tmp_path, sources, weights, log=print)
