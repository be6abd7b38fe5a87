"""D2M's denoiser: upstream's `DiffusionModel(net_t=UNetV0, use_text_conditioning=True, use_embedding_cfg=True,
embedding_max_length=357, embedding_features=219, ...)` as one module, and its checkpoint names.

σ (B,) → learned Fourier features → time features for the U-Net's modulation; the MOT tokens (B, 357, 219), or the
learned null tokens for classifier-free guidance, are the cross-attention context; the U-Net predicts v for the
noisy latents (B, 32, L). Sampling and the v-diffusion loss live in `avtool.sampling` / the trainer.

Upstream's `DiffusionModel` registers its one U-Net three times (`net`, `diffusion.net`, `sampler.net`), and its time
MLP repeats one Linear+GELU instance, so `dancecondation_test_final.pt` lists 2268 names for 754 distinct tensors.
`upstream_state_dict` rebuilds exactly that; `load_upstream_state_dict` takes it, or its `net.` part alone. The alias
helpers below serve the DMAE's decoder too (same upstream class, under `model.`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from avtool.errors import WeightsError
from avtool.models.d2m.unet import UNet1d, UNetConfig, parameter_names, upstream_module_names
from avtool.weights.loading import shortlist

UPSTREAM_ALIASES = ("net.", "diffusion.net.", "sampler.net.")
# TimeConditioningPlugin(blocks: embedder, mlp, TextConditioningPlugin(blocks: ClassifierFreeGuidancePlugin(blocks:
# FixedEmbedding(blocks: nn.Embedding), XUNet(net: root Block))))
_NULL_EMBEDDING = "blocks.2.blocks.0.blocks.0.blocks.0"
_UNET_ROOT = "blocks.2.blocks.0.blocks.1.net."


class NumberEmbedder(nn.Module):
    """σ (N,) → Linear([σ, sin 2πσw, cos 2πσw]) (N, features), w learned (a-unet's `NumberEmbedder`)."""

    def __init__(self, features: int, dim: int = 256) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))
        self.to_out = nn.Linear(dim + 1, features)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma[:, None]
        freqs = sigma * self.weights[None] * 2 * math.pi
        return self.to_out(torch.cat([sigma, freqs.sin(), freqs.cos()], dim=-1))


class TimeConditioning(nn.Module):
    """σ (B,) → time features (B, features): GELU(NumberEmbedder(σ)), then GELU(Linear(·)) `num_layers` times with
    the same Linear each time (upstream's `Repeat` of one module instance)."""

    def __init__(self, features: int, num_layers: int = 2) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.embedder = NumberEmbedder(features)
        self.linear = nn.Linear(features, features)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.embedder(sigma))
        for _ in range(self.num_layers):
            h = F.gelu(self.linear(h))
        return h


def time_module_names(num_layers: int = 2) -> list[tuple[str, str]]:
    """(our module, upstream module) for `TimeConditioning`, relative to it and to the `TimeConditioningPlugin`; the
    shared Linear appears once per layer."""
    return [("embedder", "blocks.0"), ("embedder.to_out", "blocks.0.to_out"),
            *(("linear", f"blocks.1.blocks.{i}.0") for i in range(num_layers))]


@dataclass(frozen=True)
class D2MConfig:
    """The U-Net's config and the null-token table's length (MOT's 356 frames + its class token)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    embedding_max_length: int = 357

    def __post_init__(self) -> None:
        if self.unet.embedding_features is None or not self.unet.use_modulation:
            raise ValueError("D2M needs a U-Net with cross-attention (embedding_features) and modulation")


class D2MDenoiser(nn.Module):
    """Upstream's `Dmodel.net`: time conditioning, the null-token table and the U-Net; predicts v."""

    def __init__(self, config: D2MConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or D2MConfig()
        self.time = TimeConditioning(config.unet.modulation_features)
        self.null_embedding = nn.Embedding(config.embedding_max_length, config.unet.embedding_features)
        self.unet = UNet1d(config.unet)

    def null_tokens(self, batch: int, length: int) -> torch.Tensor:
        """The learned unconditional context (batch, length, embedding_features): row i of the table at position i."""
        if length > self.config.embedding_max_length:
            raise ValueError(f"{length} tokens exceed the null table's {self.config.embedding_max_length}")
        positions = torch.arange(length, device=self.null_embedding.weight.device)
        return self.null_embedding(positions).expand(batch, -1, -1)

    def mask_tokens(self, motion_tokens: torch.Tensor, proba: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each sample's whole context swapped for the null tokens with probability `proba` (training's condition
        dropout, 0.2 upstream); the draw uses `generator` (on the tokens' device) when given."""
        if proba <= 0.0:
            return motion_tokens
        batch, length, _ = motion_tokens.shape
        if proba >= 1.0:
            masked = torch.ones(batch, 1, 1, dtype=torch.bool, device=motion_tokens.device)
        else:
            masked = torch.bernoulli(torch.full((batch, 1, 1), proba, device=motion_tokens.device), generator=generator).bool()
        return torch.where(masked, self.null_tokens(batch, length).to(motion_tokens.dtype), motion_tokens)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, motion_tokens: torch.Tensor,
                embedding_mask_proba: float = 0.0, embedding_scale: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Predicted v (B, C, L) for noisy latents x (B, C, L) at noise level σ (B,) or one σ for all.

        With `embedding_scale` ≠ 1, classifier-free guidance as upstream: `uncond + (cond - uncond) · scale`, both
        passes run as one batch of 2B. `embedding_mask_proba` masks samples first (see `mask_tokens`).
        """
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=self.time.embedder.weights.dtype, device=x.device)
        features = self.time(sigma.expand(batch) if sigma.ndim == 0 else sigma)
        tokens = self.mask_tokens(motion_tokens, embedding_mask_proba, generator)
        if embedding_scale == 1.0:
            return self.unet(x, features, tokens)
        null = self.null_tokens(batch, tokens.shape[1]).to(tokens.dtype)
        cond, uncond = self.unet(torch.cat([x, x]), features.repeat(2, 1), torch.cat([tokens, null])).chunk(2)
        return uncond + (cond - uncond) * embedding_scale


def upstream_key_names(model: D2MDenoiser) -> list[tuple[str, str]]:
    """(our state-dict key, upstream key after an alias prefix), in upstream's order; our time Linear twice."""
    modules = [(f"time.{ours}", theirs) for ours, theirs in time_module_names(model.time.num_layers)]
    modules.append(("null_embedding", _NULL_EMBEDDING))
    modules += [(f"unet.{ours}", _UNET_ROOT + theirs) for ours, theirs in upstream_module_names(model.config.unet)]
    return parameter_names(model, modules)


def upstream_state_dict(model: D2MDenoiser) -> dict[str, torch.Tensor]:
    """What upstream's `Dmodel.state_dict()` holds: every tensor under the three aliases, sharing storage with `model`."""
    state = model.state_dict()
    return with_aliases({theirs: state[ours] for ours, theirs in upstream_key_names(model)})


def load_upstream_state_dict(model: D2MDenoiser, state_dict: Mapping[str, torch.Tensor], *, assign: bool = False,
                             name: str = "dancecondation_test_final.pt") -> None:
    """Load upstream's `Dmodel.state_dict()` into `model`: its `net.` names; `diffusion.net.` / `sampler.net.` copies
    may be there and must mirror `net.` (names and shapes), their values are not read. WeightsError names the first
    unexpected, missing and wrong-shaped keys. `assign=True` takes the tensors as they are (for a meta-device model)."""
    pairs = [(ours, "net." + theirs) for ours, theirs in upstream_key_names(model)]
    own = model.state_dict()
    state, alias_problems = drop_alias_copies(state_dict)
    problems = layout_problems({theirs: tuple(own[ours].shape) for ours, theirs in pairs}, state) + alias_problems
    if problems:
        raise WeightsError(f"{name}: not a D2M diffusion state dict: {', '.join(problems)}", model="d2m")
    model.load_state_dict(gather_tied(pairs, state, name), strict=True, assign=assign)


# Upstream's `DiffusionModel` (D2M's denoiser, the DMAE's decoder) registers its one net as `net`, `diffusion.net` and
# `sampler.net`, so its state dict lists every net tensor under the three prefixes; saving keeps them as one storage.


def with_aliases(net_state: Mapping[str, torch.Tensor], root: str = "") -> dict[str, torch.Tensor]:
    """Tensors named relative to a `DiffusionModel`'s net, listed under its three aliases after `root` (the same
    tensor under each name), as upstream's state dict lists them."""
    return {root + alias + key: tensor for alias in UPSTREAM_ALIASES for key, tensor in net_state.items()}


def drop_alias_copies(state_dict: Mapping[str, torch.Tensor], root: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state_dict` without its `root + "diffusion.net."` / `root + "sampler.net."` copies of `root + "net."`, and a
    problem for each copy that is there but does not mirror `net.` in names and shapes (its values are not read)."""
    primary, *copies = (root + alias for alias in UPSTREAM_ALIASES)

    def shapes(prefix: str) -> dict[str, torch.Size]:
        return {key.removeprefix(prefix): tensor.shape for key, tensor in state_dict.items() if key.startswith(prefix)}

    net_shapes = shapes(primary)
    problems = [f"{prefix}* does not mirror {primary}*" for prefix in copies if (copy := shapes(prefix)) and copy != net_shapes]
    kept = {key: tensor for key, tensor in state_dict.items() if not key.startswith(tuple(copies))}
    return kept, problems


def layout_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor],
                    optional: Collection[str] = ()) -> list[str]:
    """The first few unexpected, missing (unless `optional`) and wrong-shaped keys of `found` against `expected`."""
    unexpected = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found) - set(optional))
    wrong = [f"{key} {tuple(found[key].shape)} != {tuple(shape)}" for key, shape in expected.items()
             if key in found and tuple(found[key].shape) != tuple(shape)]
    return [text for text in (shortlist("unexpected keys", unexpected), shortlist("missing keys", missing),
                              shortlist("wrong shapes", wrong)) if text]


def gather_tied(pairs: Sequence[tuple[str, str]], state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Our state dict out of upstream's through (our key, upstream key) pairs. A key of ours paired twice (the time
    MLP's Linear, repeated upstream) must find equal tensors under both names (meta tensors are not compared)."""
    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs in pairs:
        tensor = state[theirs]
        first = tensors.setdefault(ours, tensor)
        if first is not tensor and not (tensor.is_meta or first.is_meta or torch.equal(first, tensor)):
            raise WeightsError(f"{name}: the time MLP's repeated Linear holds two different weights ({theirs})", model="d2m")
    return tensors
