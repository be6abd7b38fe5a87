"""genmo's LoRA (mochi `dit/joint_model/lora.py`) on diffusers' split projections, kept unmerged for training.

genmo puts one LoRA on each packed projection: `qkv_x` stacks the q, k and v rows, so it has one
down-projection A (rank, in) and one up-projection B (3 x out, rank). On diffusers' separate `to_q/to_k/to_v`
that is the same A shared by the three and B cut in row blocks. `PackedLora` holds A and B exactly as genmo
stores them; each `LoraLinear` adds its own row block's update to its frozen Linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PackedLora(nn.Module):
    """One low-rank update of a packed projection: ΔW = B @ A · alpha / rank, B's rows split by `out_features`."""

    def __init__(self, in_features: int, out_features: Sequence[int], rank: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(sum(out_features), rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # genmo's init: A as nn.Linear's weight, B zero
        self.out_features = tuple(out_features)
        self.scale = alpha / rank

    def update(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """(x Aᵀ) B_partᵀ · scale, where B_part is the rows of packed projection number `part`."""
        rows = self.lora_B.split(self.out_features)[part]
        return F.linear(F.linear(x, self.lora_A), rows) * self.scale


class LoraLinear(nn.Module):
    """A frozen Linear plus its row block of a (shared) PackedLora's update."""

    def __init__(self, base: nn.Linear, lora: PackedLora, part: int) -> None:
        super().__init__()
        self.base, self.lora, self.part = base, lora, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora.update(x, self.part)


def attach_packed_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> PackedLora:
    """Wrap the Linears at `targets` (submodule paths, in packed row order) in LoraLinears sharing one new PackedLora.

    The PackedLora is created in fp32 on the first target's device, whatever the base weights' dtype.
    """
    bases = [model.get_submodule(path) for path in targets]
    if len({base.in_features for base in bases}) != 1:
        raise ValueError(f"packed projections {list(targets)} take inputs of different widths")
    lora = PackedLora(bases[0].in_features, [base.out_features for base in bases], rank, alpha)
    lora = lora.to(bases[0].weight.device)
    for part, (path, base) in enumerate(zip(targets, bases, strict=True)):
        parent, _, name = path.rpartition(".")
        model.get_submodule(parent).register_module(name, LoraLinear(base, lora, part))
    return lora
