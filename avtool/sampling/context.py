"""Visual-conditioned parallel denoising (MuseV): a long video denoised in overlapping windows of frames, each
window seeing the same clean condition frame(s) in front of it.

Per call (one denoising step), for every window of frames: the clean condition latents, then the window's noisy
latents, go through the model together; the condition frames' predictions are dropped; the window's predictions
are added into their frames, and overlapping frames are averaged at the end. Windows are batched
`batch_size` at a time, so memory depends on the window batch, not on the video's length.

Upstream averages the unguided predictions and applies CFG after; `denoise` here may already be guided
(`CFGDenoiser`): guidance is linear, so the average of guided predictions is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

import torch


def context_windows(num_frames: int, context_frames: int, overlap: int) -> list[list[int]]:
    """MuseV's default `uniform_v2` schedule: windows [s, s + context_frames) for s = 0, step, 2 step, ... < T with
    step = context_frames - overlap, the last ones cut at T; a final window ending where the previous one ends is
    dropped (`drop_last_repeat_context`). T=60, 12, 4 -> [0..11], [8..19], ..., [48..59]."""
    if not 0 <= overlap < context_frames:
        raise ValueError(f"the overlap ({overlap}) must be below the window ({context_frames})")
    step = context_frames - overlap
    windows = [list(range(start, min(start + context_frames, num_frames))) for start in range(0, num_frames, step)]
    if len(windows) > 1 and windows[-1][-1] == windows[-2][-1]:
        windows.pop()
    return windows


class ParallelDenoiser:
    """`denoise(x, t, **conditioning)` for all frames of `x` (B, C, T, H, W), through `windows` of frames, each with
    `condition` (B, C, n, H, W, clean and unscaled, as upstream places them) in front.

    `denoise` receives (k * B, C, n + W, H, W) for k windows of W frames (windows of one length are batched, at most
    `batch_size` windows per call) and returns predictions of that shape. Conditioning named in `frame_args` has a
    frame axis at dim 2 covering the condition frames and then all T frames (e.g. control images (B, 3, n + T, H, W));
    it is cut like the latents, to (k * B, ., n + W, ...). The rest passes unchanged (the model adapter expands it
    to the k * B rows).
    """

    def __init__(self, denoise: Callable[..., torch.Tensor], windows: Sequence[Sequence[int]], condition: torch.Tensor,
                 batch_size: int = 1, frame_args: tuple[str, ...] = ()) -> None:
        self.denoise = denoise
        self.windows = [list(w) for w in windows]
        self.condition = condition
        self.batch_size = batch_size
        self.frame_args = frame_args

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        prediction = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        count = torch.zeros(x.shape[2], dtype=torch.float32, device=x.device)
        n = self.condition.shape[2]
        condition = self.condition.to(x.dtype)
        for group in self._batches():
            frames = [torch.tensor(w, device=x.device) for w in group]
            batch = torch.cat([torch.cat([condition, x[:, :, f]], dim=2) for f in frames])
            window_args = {name: torch.cat([value[:, :, torch.cat([torch.arange(n), n + f.cpu()]).to(value.device)]
                                            for f in frames]) if name in self.frame_args else value
                           for name, value in conditioning.items()}
            out = self.denoise(batch, t, **window_args)[:, :, n:].float()
            for part, f in zip(out.chunk(len(group)), frames, strict=True):
                prediction[:, :, f] += part
                count[f] += 1
        return (prediction / count.view(1, 1, -1, 1, 1)).to(x.dtype)

    def _batches(self) -> list[list[list[int]]]:
        """Windows in order, grouped by length, at most `batch_size` per group."""
        groups = []
        for _, same in groupby(self.windows, key=len):
            same = list(same)
            groups += [same[i:i + self.batch_size] for i in range(0, len(same), self.batch_size)]
        return groups
