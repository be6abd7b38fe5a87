"""What every generation pipeline shares: its options, job planning, seeds, devices and sidecars.

Importing this module imports no torch; the functions that need it import it themselves.
"""

from __future__ import annotations

import json
import platform
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import avtool
from avtool.errors import BadInput

DTYPES = ("auto", "fp32", "bf16", "fp16")


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
    skip_existing: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class Job:
    """One output to make: an input file rendered with one seed."""

    input: Path
    seed: int
    output: Path


def draw_seed() -> int:
    """A fresh seed for a run that was given none (printed and recorded by the caller)."""
    return secrets.randbelow(2**31)


def plan_jobs(inputs: list[Path], opts: GenerationOptions, suffix: str, ext: str = ".mp4") -> list[Job]:
    """One job per (input, seed), named `<stem><suffix>[_seed<N>]<ext>` in the output folder.

    `-o` names the file of a single job. With --skip-existing, jobs whose output exists are dropped.
    """
    seeds = list(dict.fromkeys(opts.seeds)) or [draw_seed()]
    count = len(inputs) * len(seeds)
    if opts.output is not None and count > 1:
        raise BadInput(f"-o/--output names one file but this run makes {count}", hint="use --output-dir instead")
    jobs = []
    for path in inputs:
        for seed in seeds:
            if opts.output is not None:
                out = opts.output
            else:
                tag = f"_seed{seed}" if len(seeds) > 1 else ""
                out = opts.output_dir / f"{path.stem}{suffix}{tag}{ext}"
            jobs.append(Job(path, seed, out))
    outputs = [job.output for job in jobs]
    clash = next((out for out in outputs if outputs.count(out) > 1), None)
    if clash is not None:
        raise BadInput(f"two inputs would both write {clash}", hint="inputs need different file names")
    if opts.skip_existing:
        jobs = [job for job in jobs if not job.output.exists()]
    return jobs


def resolve_device(spec: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch device string that exists on this machine."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {spec}: no CUDA device on this machine", hint="use --device cpu")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise BadInput(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
        return spec
    raise BadInput(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(spec: str, device: str):
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> a torch dtype; auto is bf16 on CUDA and fp32 on CPU."""
    import torch

    if spec not in DTYPES:
        raise BadInput(f"--dtype {spec}: expected one of {', '.join(DTYPES)}")
    if spec == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def write_sidecar(output: Path, record: dict[str, Any]) -> Path:
    """Write `<output>.json`: the command line, versions, and `record` (seed, weights, timings, ...)."""
    from avtool.media.files import atomic_output

    versions = {"avtool": avtool.__version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    sidecar = output.with_name(output.name + ".json")
    with atomic_output(sidecar) as tmp:
        tmp.write_text(json.dumps({"command": sys.argv, "versions": versions, **record}, indent=2, default=str) + "\n")
    return sidecar
