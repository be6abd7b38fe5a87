"""The job driver every generation command shares: options, job planning, the per-job loop, sidecars.

    validate (cheap, no torch) -> plan_jobs -> run_jobs: load models once -> per job: render the output,
    write its sidecar, yield the result (the CLI prints it at once)

A pipeline module supplies the validation, a `load()` and a `render(models, job)`; everything else is here,
once. Importing this module imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import avtool
from avtool.errors import AvtoolError, BadInput
from avtool.runtime import GENERATORS, MAX_SEED, Shard, Stopwatch, check_device, check_dtype, draw_seed, resolve_shard
from avtool.ui import say

Models = TypeVar("Models")
MAX_STEPS = 1000
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", *VIDEO_SUFFIXES)
SILENCE_DBFS = -60.0


@dataclass
class GenerationOptions:
    """The options every generation command (dance, score, animate, tokens) takes, with one meaning."""

    output: Path | None = None
    output_dir: Path = Path("outputs")
    seeds: list[int] = field(default_factory=list)
    steps: int | None = None
    weights_dir: Path = Path("weights")
    device: str = "auto"
    dtype: str = "auto"
    generator: str = "cpu"  # where the initial noise is drawn: "cpu" (same video on any device) or "device" (as upstream on CUDA)
    skip_existing: bool = False
    overwrite: bool = False
    keep_going: bool = False
    shard: str | None = None  # "K/N"; None: from the launcher's environment, if any
    quiet: bool = False

    def check(self, min_steps: int = 1) -> None:
        """Refuse malformed shared options before anything loads."""
        check_device(self.device)
        check_dtype(self.dtype)
        check_choice("--generator", self.generator, GENERATORS)
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise BadInput(f"--seed {seed}: must be between 0 and {MAX_SEED}")
        if self.steps is not None:
            check_range("--steps", self.steps, min_steps, MAX_STEPS)
        resolve_shard(self.shard)


def check_range(option: str, value: float, low: float, high: float, note: str = "") -> None:
    """Refuse (exit 2) `option VALUE` outside [low, high], NaN included; `note` qualifies the range ("0 is off")."""
    if not low <= value <= high:
        raise BadInput(f"{option} {value:g}: must be from {low:g} to {high:g}{f' ({note})' if note else ''}")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadInput(f"{option} {value}: expected one of {', '.join(choices)}")


def collect_files(inputs: list[Path], suffixes: tuple[str, ...], kind: str) -> list[Path]:
    """The input files, with a folder standing for the files directly in it whose suffix is in `suffixes`
    (upstream's `--video_dir`-style runs; a cron job's drop folder). `kind` names them in the error."""
    files = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise BadInput(f"{path}: a folder with no {kind} file ({', '.join(suffixes)})")
            files += found
        else:
            files.append(path)
    return list(dict.fromkeys(files))


def autocast_for(precision: str, device: str) -> tuple[Callable[[], Any], str]:
    """What a run with fp32 weights computes under: "fp16"/"bf16" -> that autocast on `device`, anything else ->
    plain fp32. Returns a context-manager factory and its label for the sidecar."""
    import contextlib
    import functools

    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        return contextlib.nullcontext, "fp32"
    return functools.partial(torch.autocast, torch.device(device).type, dtype=dtypes[precision]), f"{precision} autocast"


def check_not_silent(path: Path, samples: Any, start: float, seconds: float) -> None:
    """Refuse (exit 2) an audio excerpt (a numpy array) below -60 dBFS RMS: the video would follow silence."""
    import numpy as np

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < SILENCE_DBFS:
        raise BadInput(f"{path}: the excerpt {start:.2f}-{start + seconds:.2f} s is silent ({level:.0f} dBFS)",
                       hint="choose another --start (or --seed), or check the file's audio")


@dataclass(frozen=True)
class Job:
    """One output to make: named inputs (files, prompts, ...), a seed, and the file to write."""

    inputs: dict[str, Any]
    seed: int
    output: Path

    @property
    def label(self) -> str:
        """The job's name in messages: its first input."""
        return str(next(iter(self.inputs.values()), self.output.name))


def job_stem(inputs: dict[str, Any]) -> str:
    """The stem output names start with: the first input file's stem, else the first text input as a short slug."""
    for value in inputs.values():
        if isinstance(value, Path):
            return value.stem
    for value in inputs.values():
        if isinstance(value, str) and (slug := re.sub(r"[^A-Za-z0-9]+", "_", value).strip("_")[:40]):
            return slug
    return "output"


def plan_jobs(sources: list[dict[str, Any]], opts: GenerationOptions, suffix: str, ext: str = ".mp4",
              shard: Shard | None = None) -> list[Job]:
    """One job per (source, seed), written to `<output-dir>/<stem><suffix>[_seed<N>]<ext>` (see `job_stem`).

    `-o` names the file of a single job. Two jobs that would write one file are refused. With a shard, this
    process keeps jobs i % N == K of the full plan (the same split in every process and on every re-run); then
    --skip-existing drops the jobs whose output is complete (`is_complete`).
    """
    seeds = list(dict.fromkeys(opts.seeds)) or [draw_seed()]
    count = len(sources) * len(seeds)
    if opts.output is not None and count > 1:
        raise BadInput(f"-o/--output names one file but this run makes {count}", hint="use --output-dir instead")
    if opts.output is not None and opts.output.suffix.lower() != ext:
        raise BadInput(f"-o {opts.output}: this command writes {ext} files", hint=f"name the output *{ext}")
    jobs = []
    for inputs in sources:
        for seed in seeds:
            if opts.output is not None:
                out = opts.output
            else:
                tag = f"_seed{seed}" if len(seeds) > 1 else ""
                out = opts.output_dir / f"{job_stem(inputs)}{suffix}{tag}{ext}"
            jobs.append(Job(inputs, seed, out))
    outputs = [job.output.resolve() for job in jobs]
    clash = next((job.output for job, out in zip(jobs, outputs, strict=True) if outputs.count(out) > 1), None)
    if clash is not None:
        raise BadInput(f"two inputs would both write {clash}", hint="inputs need different file names")
    if shard is not None:
        jobs = shard.take(jobs)
    if opts.skip_existing:
        jobs = [job for job in jobs if not is_complete(job.output)]
    for job in jobs:
        check_output(job, replace=opts.overwrite or opts.skip_existing)
    return jobs


def check_output(job: Job, replace: bool) -> None:
    """Refuse (before anything loads) an output that is one of the job's inputs, that exists (unless `replace`),
    that is read-only, or whose name or sidecar name is taken by a folder; and a folder where nothing can be written."""
    output, sidecar = job.output, sidecar_path(job.output)
    for path in (output, sidecar):
        if path.is_dir():
            raise BadInput(f"{path}: is a folder, so the output cannot be written there", hint="remove it or choose another output name")
    for value in job.inputs.values():
        if isinstance(value, Path) and value.exists() and output.exists() and os.path.samefile(value, output):
            raise BadInput(f"{output}: is the input {value}; an input is never overwritten", hint="choose another -o or --output-dir")
    if output.exists() and not replace:
        raise BadInput(f"{output}: exists", hint="--overwrite replaces it; --skip-existing redoes only unfinished outputs")
    if output.exists() and not (output.stat().st_mode & 0o222 and os.access(output, os.W_OK)):  # mode bits: root too
        raise BadInput(f"{output}: exists and is read-only", hint="change its permissions or choose another output name")
    folder = next(p for p in (output.absolute().parent, *output.absolute().parents) if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{folder}: cannot write outputs there (not a writable folder)", hint="choose another output folder")


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def is_complete(output: Path) -> bool:
    """Whether `output` was finished by a run: a file whose sidecar (written last) records its size and sha256.

    A zero-byte, half-written or replaced file, or one without its sidecar, is not done.
    """
    from avtool.weights.manifest import digests

    try:
        recorded = json.loads(sidecar_path(output).read_text())["output"]
        return output.is_file() and output.stat().st_size == recorded["size"] and digests(output).sha256 == recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class RunInfo:
    """What is the same for every job of a run, as recorded in each sidecar."""

    command: str  # the subcommand
    device: str
    dtype: str
    steps: int | None
    weights: dict[str, Any]  # model id -> {file: sha256}, see `weights_record`
    options: dict[str, Any]  # the command's own options
    shard: Shard | None = None
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Rendered:
    """What `render` reports about the output it wrote: facts for the result and the sidecar, and its timings."""

    details: dict[str, Any]
    timings: dict[str, float]


class JobsFailed(AvtoolError):
    """Some jobs of a --keep-going run (or files of a many-file command) failed; the exit code is the first failure's."""

    def __init__(self, failed: int, total: int, first: AvtoolError, what: str = "jobs") -> None:
        super().__init__(f"{failed} of {total} {what} failed (first: {first.message})", hint=first.hint)
        self.exit_code = first.exit_code


def run_jobs(
    jobs: list[Job],
    opts: GenerationOptions,
    load: Callable[[], tuple[Models, RunInfo]],
    render: Callable[[Models, Job], Rendered],
) -> Iterator[dict[str, Any]]:
    """Load once, then per job: render its output, write its sidecar, yield its result.

    Without --keep-going the first failure propagates. With it, a failed job yields `{"error", "hint",
    "exit_code", ...}` and the next one runs; at the end JobsFailed carries the first failure's exit code.
    Ctrl-C always stops the run.
    """
    if not jobs:
        say("nothing to do: every output exists (--skip-existing)" if opts.skip_existing else "nothing to do", opts.quiet)
        return
    if not opts.seeds:
        say(f"seed {jobs[0].seed} (drawn; pass --seed to repeat this run)", opts.quiet)
    from avtool.media import ensure_output_dir

    for folder in {job.output.parent for job in jobs}:
        ensure_output_dir(folder)
    models, info = load()
    failures: list[AvtoolError] = []
    for job in jobs:
        base = {"inputs": {k: str(v) for k, v in job.inputs.items()}, "output": str(job.output), "seed": job.seed}
        clock = Stopwatch()
        try:
            rendered = render(models, job)
            sidecar = write_sidecar(job, info, rendered)
        except Exception as error:
            if not opts.keep_going:
                raise
            failure = error if isinstance(error, AvtoolError) else AvtoolError(  # exit 1: our bug
                f"internal error: {type(error).__name__}: {error}", hint="run again with --debug for the traceback")
            failures.append(failure)
            yield {**base, "error": failure.message, "hint": failure.hint, "exit_code": failure.exit_code}
            continue
        say(f"wrote {job.output}", opts.quiet)
        yield {**base, "sidecar": str(sidecar), **rendered.details, "seconds": round(clock.lap(), 3)}
    if failures:
        raise JobsFailed(len(failures), len(jobs), failures[0])


def write_sidecar(job: Job, info: RunInfo, rendered: Rendered) -> Path:
    """A generated output's sidecar: the run, the job, its details and timings, and the output's digest."""
    from avtool.weights.manifest import digests

    output = digests(job.output)
    return write_record(job.output, {
        "subcommand": info.command, "inputs": {k: str(v) for k, v in job.inputs.items()}, "seed": job.seed,
        "steps": info.steps, "device": info.device, "dtype": info.dtype, "shard": info.shard.as_record() if info.shard else None,
        "options": info.options, **rendered.details, "weights": info.weights,
        "output": {"path": str(job.output), "size": output.size, "sha256": output.sha256},
        "timings": {"load": round(info.load_seconds, 3), **{k: round(v, 3) for k, v in rendered.timings.items()}},
    })


def write_record(output: Path, record: dict[str, Any]) -> Path:
    """Write `<output>.json` atomically, after the output: the command line, the versions, and `record`.

    If it cannot be written, the output is removed: an output without its sidecar is not a result.
    """
    from avtool.media.files import atomic_output

    versions = {"avtool": avtool.__version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    sidecar = sidecar_path(output)
    try:
        with atomic_output(sidecar) as tmp:
            tmp.write_text(json.dumps({"command": sys.argv, "versions": versions, **record}, indent=2, default=str) + "\n")
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return sidecar


def weights_record(files: dict[str, list[Path]]) -> dict[str, dict[str, str]]:
    """model id -> {file: sha256} for the files a run reads: from each folder's manifest, hashing only unlisted files."""
    from avtool.weights.manifest import MANIFEST_NAME, digests, read_manifest

    record: dict[str, dict[str, str]] = {}
    manifests: dict[Path, dict[str, Any] | None] = {}
    for model, paths in files.items():
        for path in paths:
            folder = next((p for p in path.parents if (p / MANIFEST_NAME).is_file()), None)
            if folder is not None and folder not in manifests:
                manifests[folder] = read_manifest(folder)
            entry = manifests.get(folder, {}) if folder else {}
            listed = (entry or {}).get("files", {}).get(path.relative_to(folder).as_posix()) if folder else None
            if listed and listed.get("size") == path.stat().st_size:
                record.setdefault(model, {})[str(path)] = listed["sha256"]
            else:
                record.setdefault(model, {})[str(path)] = digests(path).sha256
    return record


def options_record(request: Any) -> dict[str, Any]:
    """A request dataclass as plain JSON values."""
    return json.loads(json.dumps(asdict(request), default=str))

