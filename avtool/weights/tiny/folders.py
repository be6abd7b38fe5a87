"""Writing a diffusers pipeline folder from tiny components, as `DiffusionPipeline.save_pretrained` lays it out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_pipeline_folder(folder: Path, pipeline_class: str, components: dict[str, Any], saved: tuple[str, ...] = (),
                          **save_options: dict[str, Any]) -> Path:
    """Save each component under `folder/<name>` (except those in `saved`, already written there) with its
    `save_options[name]`, then `model_index.json` naming `pipeline_class` and each component's (library, class)."""
    import diffusers

    for name, component in components.items():
        if name not in saved:
            component.save_pretrained(folder / name, **save_options.get(name, {}))
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
             **{name: [type(c).__module__.split(".")[0], type(c).__name__] for name, c in components.items()}}
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return folder
