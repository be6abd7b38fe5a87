"""Loading upstream state dicts (already read by the caller) into our modules: the key names are upstream's, so
loading is a strict check plus `load_state_dict`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from avtool.errors import WeightsError
from avtool.weights.loading import shortlist

IMAGE_PROJ_KEY = "image_proj"  # ip_adapter_image_proj.bin holds {"image_proj": state, ...}


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Load `state` into `module`: every key used, every shape equal, or WeightsError naming the first misfits."""
    layout = _layout(module)
    problems = ", ".join(filter(None, (shortlist("unexpected keys", sorted(set(state) - set(layout))),
                                       shortlist("missing keys", sorted(set(layout) - set(state))), _wrong_shapes(layout, state))))
    if problems:
        raise WeightsError(f"{name}: checkpoint does not fit {type(module).__name__}: {problems}")
    module.load_state_dict(state)


def load_base_spatial_weights(unet: nn.Module, sd15_unet_state: Mapping[str, torch.Tensor], name: str) -> None:
    """Upstream's `update_unet_with_sd`: an SD1.5 UNet's weights over the motion checkpoint's spatial layers.

    Keys the SD1.5 state lacks (temporal layers, IP-Adapter and ReferenceNet-fusion weights) keep their values;
    a key the UNet lacks or a wrong shape is a WeightsError.
    """
    layout = _layout(unet)
    problems = ", ".join(filter(None, (shortlist("unexpected keys", sorted(set(sd15_unet_state) - set(layout))),
                                       _wrong_shapes(layout, sd15_unet_state))))
    if problems:
        raise WeightsError(f"{name}: not an SD1.5 UNet matching this MuseV UNet: {problems}")
    unet.load_state_dict(sd15_unet_state, strict=False)


def image_projection_state(checkpoint: Mapping, name: str) -> Mapping[str, torch.Tensor]:
    """The ImageProjModel state dict inside an `ip_adapter_image_proj.bin` checkpoint."""
    state = checkpoint.get(IMAGE_PROJ_KEY)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{name}: no {IMAGE_PROJ_KEY!r} state dict (found keys: {', '.join(map(str, checkpoint))})")
    return state


def _layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def _wrong_shapes(layout: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]) -> str:
    wrong = [f"{key} {tuple(tensor.shape)} != {layout[key]}" for key, tensor in sorted(state.items())
             if key in layout and tuple(tensor.shape) != layout[key]]
    return shortlist("wrong shapes", wrong)
