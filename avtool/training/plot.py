"""The loss curve of a training run, drawn from its metrics.jsonl to a PNG."""

from __future__ import annotations

from pathlib import Path

from avtool.errors import BadInput
from avtool.media.files import atomic_output
from avtool.training.metrics import METRICS_FILE, read_metrics


def plot_metrics(run_dir: str | Path, out_png: str | Path, smoothing: int = 20) -> Path:
    """Draw the loss per step (and its running mean over `smoothing` steps) to `out_png`; BadInput if nothing is logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(Path(run_dir)) if "step" in r and "loss" in r]
    if not records:
        raise BadInput(f"{run_dir}: no training metrics ({METRICS_FILE} is missing or empty)", hint="pass the folder a training run wrote")
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.plot(steps, losses, linewidth=0.8, alpha=0.4, label="loss")
    axes.plot(steps, _running_mean(losses, smoothing), linewidth=1.6, label=f"mean of {smoothing} steps")
    axes.set(xlabel="step", ylabel="loss", title=f"training loss: {Path(run_dir).resolve().name}")
    axes.set_yscale("log" if min(losses) > 0 else "linear")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return out_png


def _running_mean(values: list[float], window: int) -> list[float]:
    means, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        means.append(total / min(i + 1, window))
    return means
