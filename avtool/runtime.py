"""Where and how a run executes: device, dtype, seeds, the shard of the job list, timing, library noise.

Used by the pipelines and by training. Importing this module imports no torch; `resolve_device` and
`resolve_dtype` check what they can without it first, so a bad option is refused at once.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from avtool.errors import BadInput

DTYPES = ("auto", "fp32", "bf16", "fp16")
RUNNER_MODES = ("auto", "eager", "compile", "cuda-graph")
GENERATORS = ("cpu", "device")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def draw_seed() -> int:
    """A fresh seed for a run that was given none (printed and recorded by the caller)."""
    return secrets.randbelow(2**31)


def check_device(spec: str) -> None:
    """Refuse a malformed --device, or CUDA on a machine without an NVIDIA driver, without importing torch."""
    if not _DEVICE.fullmatch(spec):
        raise BadInput(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda") and not _nvidia_driver_present():
        raise BadInput(f"--device {spec}: no CUDA device on this machine", hint="use --device cpu")


def check_dtype(spec: str) -> None:
    if spec not in DTYPES:
        raise BadInput(f"--dtype {spec}: expected one of {', '.join(DTYPES)}")


def runs_on_cpu(spec: str) -> bool:
    """Whether --device SPEC can only mean the CPU here (known without importing torch)."""
    return spec == "cpu" or (spec == "auto" and not _nvidia_driver_present())


def dtype_bytes(spec: str, device: str) -> int:
    """Bytes per element of --dtype SPEC on `device` ("cpu" or "cuda..."), without importing torch."""
    return {"fp32": 4, "bf16": 2, "fp16": 2}.get(spec, 2 if device.startswith("cuda") else 4)


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def resolve_device(spec: str, shard: Shard | None = None) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch device string that exists on this machine.

    Under a launcher (torchrun, Slurm), 'auto' and 'cuda' mean this process's GPU, `cuda:LOCAL_RANK`.
    """
    check_device(spec)
    if runs_on_cpu(spec):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if spec == "auto":
            return "cpu"
        raise BadInput(f"--device {spec}: no CUDA device on this machine", hint="use --device cpu")
    index = spec.partition(":")[2]
    if not index:
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}" if shard and shard.launcher else "cuda"
    if int(index) >= torch.cuda.device_count():
        raise BadInput(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
    return spec


def resolve_dtype(spec: str, device: str, auto_on_cuda: str = "bf16"):
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> a torch dtype; auto is `auto_on_cuda` (the model's upstream precision)
    on CUDA and fp32 on CPU."""
    check_dtype(spec)
    import torch

    if spec == "auto":
        spec = auto_on_cuda if device.startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


@dataclass(frozen=True)
class Shard:
    """This process's share of a job list: jobs i with i % count == index (index from 0)."""

    index: int
    count: int
    local_rank: int = 0
    launcher: bool = False  # set from RANK/WORLD_SIZE (torchrun, Slurm, ...) rather than --shard

    def take(self, items: list) -> list:
        return items[self.index :: self.count]

    def as_record(self) -> list[int]:
        """[K, N] with K from 1, as --shard takes it."""
        return [self.index + 1, self.count]


def resolve_shard(option: str | None, environ: dict[str, str] | None = None) -> Shard | None:
    """`--shard K/N` (K from 1), else the launcher's RANK/WORLD_SIZE/LOCAL_RANK; None for a plain single process."""
    environ = os.environ if environ is None else environ
    if option is not None:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", option)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise BadInput(f"--shard {option}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
        return Shard(int(match[1]) - 1, int(match[2]))
    if "WORLD_SIZE" not in environ and "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    try:
        if "WORLD_SIZE" in environ:
            rank, world = int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"])
        else:  # a Slurm job array: one task per array index
            rank = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            world = int(environ["SLURM_ARRAY_TASK_COUNT"])
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as error:
        raise BadInput(f"cannot read this process's rank from the launcher's environment ({error})") from None
    if not 0 <= rank < world:
        raise BadInput(f"launcher environment: rank {rank} is outside 0..{world - 1}")
    return Shard(rank, world, local_rank, launcher=True) if world > 1 else None


def available_memory(device: str) -> int | None:
    """Bytes a run may still use on `device`: free GPU memory, or the host's available memory (and cgroup limit)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    candidates = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        candidates.append(int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            candidates.append(int(limit) - used)
    except (OSError, AttributeError, ValueError):
        pass
    return min(candidates) if candidates else None


class Stopwatch:
    """Seconds since the previous lap."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def silence_libraries() -> None:
    """Our own progress bars and messages replace diffusers' and transformers' loading bars and warnings."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
