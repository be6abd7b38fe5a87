"""Small random checkpoints written in exactly the real layouts, for tests and `make demo`.

Each model family registers a builder here as "module:function"; the function takes the weights
folder and writes that model's folder(s) under it, deterministically (fixed seeds), a few MB at most.
"""

from __future__ import annotations

import importlib
from pathlib import Path

BUILDERS: dict[str, str] = {
    "mochi-1-preview": "avtool.weights.tiny.mochi:build",
    "musicinfuser": "avtool.weights.tiny.musicinfuser:build",
    "vidmuse": "avtool.weights.tiny.vidmuse:build",
    "tempotokens": "avtool.weights.tiny.tempotokens:build",
    "musev": "avtool.weights.tiny.musev:build",
    "controlnet-openpose": "avtool.weights.tiny.musev:build_controlnet",
    "d2m": "avtool.weights.tiny.d2m:build",
}


def build_tiny(weights_dir: Path, models: list[str] | None = None) -> list[str]:
    """Write the tiny checkpoints of `models` (all registered ones if None) under `weights_dir`; return their ids."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # save_pretrained's per-shard bars are noise for files this small
    transformers_logging.disable_progress_bar()
    built = []
    for model in models or list(BUILDERS):
        module_name, _, function = BUILDERS[model].partition(":")
        getattr(importlib.import_module(module_name), function)(Path(weights_dir))
        built.append(model)
    return built
