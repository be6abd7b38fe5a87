"""Training configs: YAML files read into frozen dataclasses, with unknown keys refused by their dotted path.

Each training task declares its config as dataclasses (subclassing `TrainConfig` and the common sections below
to add its own keys); `load_config` reads a YAML file into them. Key names follow the upstream configs
(mochi's `demos/fine_tuner/configs/lora.yaml`, MusicInfuser's `configs/music_infuser.yaml`). No torch here,
so a bad config is refused before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avtool.errors import BadInput

Config = TypeVar("Config")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings (upstream: `optimizer: {lr, weight_decay}`, other AdamW arguments at torch's defaults)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class TrainingConfig:
    """The loop's settings; the names up to `grad_clip` are upstream's `training:` keys."""

    num_steps: int = 4000
    warmup_steps: int = 200
    save_interval: int = 500
    grad_clip: float = 0.0  # 0 turns clipping off
    batch_size: int = 1  # per process
    min_lr_factor: float = 0.0  # the cosine decays to lr * min_lr_factor (upstream: 0)
    keep_checkpoints: int = 2
    lr_schedule: str = "cosine"  # "cosine": warm-up then cosine; "step": x lr_gamma every lr_step_epochs epochs (StepLR)
    lr_step_epochs: int = 30
    lr_gamma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("num_steps", "batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise BadInput(f"training.{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_interval", "grad_clip", "min_lr_factor"):
            if getattr(self, name) < 0:
                raise BadInput(f"training.{name}: must not be negative, got {getattr(self, name)}")
        if self.lr_schedule not in ("cosine", "step"):
            raise BadInput(f"training.lr_schedule {self.lr_schedule!r}: expected cosine or step")


@dataclass(frozen=True)
class TrainConfig:
    """The part of a config file that every task has; `seed` is top-level as upstream."""

    seed: int = 42
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def read_yaml(path: str | Path) -> Any:
    """The YAML file at `path` (`yaml.safe_load`); BadInput (exit 2) for a missing or unreadable file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BadInput(f"{path}: cannot read the config ({str(error).splitlines()[0]})") from None


def load_config(path: str | Path, config_type: type[Config], data: Any = None) -> Config:
    """The YAML file at `path` (or its already-read `data`) as `config_type`; BadInput (exit 2) for a missing file,
    bad YAML or a bad key."""
    data = read_yaml(path) if data is None else data
    try:
        return from_dict(config_type, {} if data is None else data)
    except BadInput as error:
        raise BadInput(f"{path}: {error.message}", error.hint) from None


def from_dict(config_type: type[Config], data: Any, where: str = "") -> Config:
    """Build the dataclass `config_type` from a nested mapping, checking keys and value types.

    Missing keys take the field defaults. Field types may be int, float, bool, str, dict (taken as it is),
    nested dataclasses, `list[T]`, `tuple[T, ...]`, fixed tuples, and `T | None`.
    """
    if not isinstance(data, dict):
        raise BadInput(f"{where or 'config'}: expected a mapping of keys, got {_describe(data)}")
    hints = typing.get_type_hints(config_type)
    fields = {f.name: f for f in dataclasses.fields(config_type) if f.init}
    for key in data:
        if key not in fields:
            raise BadInput(f"unknown key {_join(where, str(key))}", hint=_known_keys_hint(str(key), fields, where))
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadInput(f"missing key {_join(where, name)}")
    return config_type(**values)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (annotation,) = [arg for arg in args if arg is not type(None)]
        return _convert(value, annotation, where)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is list and isinstance(value, list):
        return [_convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple and isinstance(value, list | tuple):
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) == len(value):
            return tuple(_convert(item, t, f"{where}[{i}]") for i, (item, t) in enumerate(zip(value, item_types, strict=True)))
    if annotation in (dict, Any) or origin is dict:
        if annotation is Any or isinstance(value, dict):
            return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is float:
        number = _as_float(value)
        if number is not None:
            return number
    if annotation is str and isinstance(value, str):
        return value
    raise BadInput(f"{where}: expected {_type_name(annotation)}, got {_describe(value)}")


def _as_float(value: Any) -> float | None:
    """A float from a YAML number; also from a string such as `2e-4`, which YAML 1.1 (PyYAML) reads as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _known_keys_hint(key: str, fields: dict[str, dataclasses.Field], where: str) -> str:
    section = f"in {where}" if where else "at the top level"
    close = difflib.get_close_matches(key, fields, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    return f"{guess}known keys {section}: {', '.join(fields)}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
