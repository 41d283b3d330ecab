"""``progress.png``: the loss curve (raw and smoothed) and the learning rate over training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesiongen.utilities.files import atomic_path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_progress(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history["step"])
    loss = np.asarray(history["loss"])
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    if len(steps):
        ax_loss.plot(steps, loss, color="lightgray", linewidth=0.8, label="loss per step")
        window = max(1, len(loss) // 50)
        smooth = _smooth(loss, window)
        ax_loss.plot(steps[len(steps) - len(smooth):], smooth, color="C0", label=f"moving mean ({window} steps)")
        ax_lr.plot(steps, history["lr"], color="C1")
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no gradient steps (nothing to train)", ha="center", transform=ax_loss.transAxes)
    ax_loss.set_ylabel("training loss")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
