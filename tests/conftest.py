import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"


def run_avtool(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m avtool ARGS` in a fresh interpreter using this checkout; text stdout/stderr."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "avtool", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def avtool():
    return run_avtool


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights folder with tiny mochi-1-preview, musicinfuser (+ wav2vec2-base-960h), vidmuse (+ encodec, CLIP) and
    tempotokens (zeroscope, BEATs, the three mappers) and musev (motion UNets, ReferenceNet, SD1.5 base, VAE, image
    encoder) with controlnet-openpose, and d2m (dmae1d-ATC32-v3 and a trained-D2M folder), built once per session."""
    from avtool.weights.tiny import build_tiny

    weights_dir = tmp_path_factory.mktemp("weights")
    build_tiny(weights_dir, ["mochi-1-preview", "musicinfuser", "vidmuse", "tempotokens", "musev", "controlnet-openpose", "d2m"])
    return weights_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on shared cores: a second intra-op thread only adds synchronisation (seconds on a busy machine).
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
