"""A trained D2M's files, as upstream's training script saves them, plus the sizes avtool needs to rebuild it.

    dancecondation_test_final.pt   `Dmodel.state_dict()`: the denoiser under `net.`, `diffusion.net.`, `sampler.net.`
    MOT_final.pt                   `mot.state_dict()`
    d2m.json                       avtool's: the MOT and U-Net sizes (absent for upstream's runs: its sizes apply)

`avtool train configs/d2m.yaml` writes this folder; `avtool score --model d2m --checkpoint RUN_DIR` reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from avtool.errors import WeightsError
from avtool.models.d2m.diffusion import D2MConfig, D2MDenoiser, load_upstream_state_dict, upstream_state_dict
from avtool.models.d2m.mot import MOT, MOTConfig
from avtool.models.d2m.unet import UNetConfig
from avtool.weights.layout import D2M_CONFIG_FILE, D2M_DIFFUSION_FILE, D2M_MOT_FILE


def config_record(mot: MOTConfig, d2m: D2MConfig) -> dict[str, Any]:
    """d2m.json's content."""
    return {"format": "avtool-d2m", "mot": asdict(mot), "unet": asdict(d2m.unet), "embedding_max_length": d2m.embedding_max_length}


def read_config(folder: Path) -> tuple[MOTConfig, D2MConfig]:
    """The sizes in `folder/d2m.json`, else upstream's (a folder from upstream's own training)."""
    path = folder / D2M_CONFIG_FILE
    if not path.is_file():
        return MOTConfig(), D2MConfig()
    try:
        record = json.loads(path.read_text())
        return MOTConfig(**record["mot"]), D2MConfig(UNetConfig(**record["unet"]), record["embedding_max_length"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: not a D2M config ({type(error).__name__}: {error})"[:300], model="d2m") from None


def save_d2m(folder: Path, mot: MOT, denoiser: D2MDenoiser) -> None:
    """Write the three files into `folder`, each atomically (the state dicts in upstream's names and aliases)."""
    from avtool.media.files import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    for name, state in ((D2M_DIFFUSION_FILE, upstream_state_dict(denoiser)), (D2M_MOT_FILE, mot.state_dict())):
        # through a file object: torch names the archive inside after a path, and the temporary one is random
        with atomic_output(folder / name) as tmp, tmp.open("wb") as file:
            torch.save({key: tensor.detach().cpu() for key, tensor in state.items()}, file)
    with atomic_output(folder / D2M_CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config_record(mot.config, denoiser.config), indent=2) + "\n")


def load_d2m(folder: Path, device: str | torch.device = "cpu") -> tuple[MOT, D2MDenoiser]:
    """MOT and the denoiser from a D2M folder, in eval mode on `device`; WeightsError (exit 3) naming a bad file."""
    from avtool.weights.loading import load_checkpoint

    mot_config, d2m_config = read_config(folder)
    mot, denoiser = MOT(mot_config), D2MDenoiser(d2m_config)
    states = {name: load_checkpoint(folder / name) for name in (D2M_DIFFUSION_FILE, D2M_MOT_FILE)}
    for name, state in states.items():
        if not isinstance(state, dict):
            raise WeightsError(f"{folder / name}: holds a {type(state).__name__}, not a state dict", model="d2m")
    load_upstream_state_dict(denoiser, states[D2M_DIFFUSION_FILE], name=str(folder / D2M_DIFFUSION_FILE))
    try:
        mot.load_state_dict(states[D2M_MOT_FILE])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:240]
        raise WeightsError(f"{folder / D2M_MOT_FILE}: not a MOT state dict of the sizes in {D2M_CONFIG_FILE} ({detail})", model="d2m") from None
    return mot.to(device).eval(), denoiser.to(device).eval()
