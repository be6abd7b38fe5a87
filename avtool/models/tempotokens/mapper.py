"""The TempoTokens audio mapper: BEATs features → per-frame tokens for the text encoder's placeholders.

`AudioTokenMapper` is upstream's `TempEmbedder` (`modules/temp_tokens/embedder.py`) with its state-dict names, so
`learned_embeds.pth` loads unchanged: an MLP per BEATs token, an average of consecutive tokens per video frame, and
from those frame tokens four local window means and one attention-pooled class token (the FGA `Atten` module of
`modules/fga/atten.py`, cut down to what the mapper builds: one unary and one self potential).

Deliberate deviation: upstream applies dropout (p=0.5) inside the unary potential at inference too, which makes the
class token random. Here that dropout is `pool_dropout`, 0 by default, so a seed fully determines the output; set
0.5 for upstream's behaviour: it is then active in eval mode too, its mask drawn from the `generator` passed to
`forward` (on the mapper's device), else from torch's global RNG, where on CPU it draws the same mask as upstream's
`F.dropout` after the same `torch.manual_seed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avtool.errors import WeightsError
from avtool.weights.loading import shortlist

LOCAL_HALF_WIDTHS = (1, 2, 4, 8)  # frames each side of the four local windows, `local_window_1..4` upstream
_DDP_PREFIX = "module."


@dataclass(frozen=True)
class MapperTokens:
    """The mapper's output for B clips of F frames, D wide: `temporal` (B, F, D), `local` four (B, F, D) window
    means (half-widths `LOCAL_HALF_WIDTHS`), `class_token` (B, D) for the whole clip."""

    temporal: torch.Tensor
    local: tuple[torch.Tensor, ...]
    class_token: torch.Tensor


class UnaryPotential(nn.Module):
    """How much each token matters on its own: Conv1d → ReLU → (dropout) → Conv1d to one score per token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Conv1d(dim, dim, 1)
        self.feature_reduce = nn.Conv1d(dim, 1, 1)

    def forward(self, tokens: torch.Tensor, dropout: float, generator: torch.Generator | None) -> torch.Tensor:
        """(B, D, N) → (B, N)."""
        hidden = F.relu(self.embed(tokens))
        if dropout:
            keep = torch.empty_like(hidden).bernoulli_(1 - dropout, generator=generator)
            hidden = hidden * keep / (1 - dropout)
        return self.feature_reduce(hidden).squeeze(1)


class SelfPotential(nn.Module):
    """How much each token agrees with the others: mean cosine similarity of two 1x1-conv embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed_X = nn.Conv1d(dim, dim, 1)
        self.embed_Y = nn.Conv1d(dim, dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, N) → (B, N)."""
        x = F.normalize(self.embed_X(tokens), dim=1)
        y = F.normalize(self.embed_Y(tokens), dim=1)
        return (x.transpose(1, 2) @ y).mean(dim=2)


class AttentionPool(nn.Module):
    """Upstream's `Atten(util_e=[D], pairwise_flag=False)`: softmax over tokens of a learned mix of the unary and the
    self potential, then the weighted sum of the tokens. One-element containers keep upstream's key names."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.un_models = nn.ModuleList([UnaryPotential(dim)])
        self.pp_models = nn.ModuleDict({"0": SelfPotential(dim)})
        self.reduce_potentials = nn.ModuleList([nn.Conv1d(2, 1, 1, bias=False)])

    def forward(self, tokens: torch.Tensor, dropout: float, generator: torch.Generator | None) -> torch.Tensor:
        """(B, N, D) → (B, D)."""
        channels_first = tokens.transpose(1, 2)
        potentials = torch.stack([self.un_models[0](channels_first, dropout, generator),
                                  self.pp_models["0"](channels_first)], dim=1)
        weights = self.reduce_potentials[0](potentials).softmax(dim=-1)
        return (weights @ tokens).squeeze(1)


class AudioTokenMapper(nn.Module):
    """BEATs features (B, T_tok, input_size) → `MapperTokens` of width `output_size` for `num_frames` frames.

    Defaults are upstream's: 12 BEATs layers × 768 concatenated, hidden 2304, output 1024 (zeroscope's text width).
    """

    def __init__(self, input_size: int = 9216, hidden_size: int = 2304, output_size: int = 1024,
                 pool_dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= pool_dropout < 1.0:
            raise ValueError(f"pool_dropout must lie in [0, 1), got {pool_dropout}")
        self.pool_dropout = pool_dropout
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.fc3 = nn.Linear(hidden_size, output_size)
        self.fc4 = nn.Linear(output_size, output_size)
        self.act = nn.GELU()
        self.fga = AttentionPool(output_size)

    def forward(self, features: torch.Tensor, num_frames: int, generator: torch.Generator | None = None) -> MapperTokens:
        """Each frame's token is the mean of its `T_tok / num_frames` consecutive BEATs tokens after the MLP (in
        BEATs' time-major patch order, as upstream). `generator` only feeds `pool_dropout`."""
        batch, length, _ = features.shape
        if length % num_frames:
            raise ValueError(f"{length} audio tokens do not split evenly into {num_frames} frames")
        per_token = self.fc3(self.act(self.fc2(self.act(self.fc1(features)))))
        per_frame = per_token.view(batch, num_frames, -1, per_token.shape[-1]).mean(dim=2)
        temporal = self.fc4(self.act(per_frame))
        return MapperTokens(
            temporal=temporal,
            local=tuple(window_means(temporal, half_width) for half_width in LOCAL_HALF_WIDTHS),
            class_token=self.fga(temporal, self.pool_dropout, generator),
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], name: str = "learned_embeds.pth") -> AudioTokenMapper:
        """The mapper saved in `state` (upstream's `at_embedder.state_dict()`), sizes read from its shapes, weights
        assigned as they are (no copy, their dtype and device). A `module.` prefix on every key (a DDP save) is
        dropped. WeightsError names the first unexpected, missing and wrong-shaped keys."""
        if state and all(key.startswith(_DDP_PREFIX) for key in state):
            state = {key.removeprefix(_DDP_PREFIX): tensor for key, tensor in state.items()}
        with torch.device("meta"):
            mapper = cls(**_sizes(state))
        expected = {key: tuple(tensor.shape) for key, tensor in mapper.state_dict().items()}
        unexpected = sorted(set(state) - set(expected))
        missing = sorted(set(expected) - set(state))
        wrong = [f"{key} {tuple(state[key].shape)} != {shape}" for key, shape in sorted(expected.items())
                 if key in state and tuple(state[key].shape) != shape]
        problems = ", ".join(filter(None, (shortlist("unexpected keys", unexpected), shortlist("missing keys", missing),
                                           shortlist("wrong shapes", wrong))))
        if problems:
            raise WeightsError(f"{name}: not a TempoTokens mapper state dict: {problems}", model="tempotokens")
        mapper.load_state_dict(state, strict=True, assign=True)
        return mapper


def window_means(tokens: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, F, D) → (B, F, D): frame i gets the mean of frames [i - w, i + w) clipped to [0, F). The window ends
    before i + w, so it is not centred (upstream's slice, kept for parity)."""
    frames = torch.arange(tokens.shape[1], device=tokens.device)
    inside = (frames[None, :] >= frames[:, None] - half_width) & (frames[None, :] < frames[:, None] + half_width)
    weights = inside / inside.sum(dim=1, keepdim=True)
    return weights.to(tokens.dtype) @ tokens


def _sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Constructor sizes read from fc1/fc3's weights where present; absent ones keep the defaults (and are then
    reported as missing keys)."""
    sizes = {}
    if (fc1 := state.get("fc1.weight")) is not None and fc1.ndim == 2:
        sizes.update(hidden_size=fc1.shape[0], input_size=fc1.shape[1])
    if (fc3 := state.get("fc3.weight")) is not None and fc3.ndim == 2:
        sizes.update(output_size=fc3.shape[0])
    return sizes
