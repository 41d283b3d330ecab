"""``progress.png`` (the loss curve, raw and smoothed, and the learning rate over training steps) and the training
loop's throughput and peak memory, which ``training_summary.json`` records."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


WARMUP_STEPS = 2  # not timed: the allocator, cuDNN autotuning and lazy imports make the first steps slow


class ThroughputMeter:
    """Training samples per second over the steps after a short warm-up, and the loop's peak memory: allocated
    GPU memory on CUDA (what the plans' estimate is about), the process's peak resident memory on CPU."""

    def __init__(self, device: torch.device, steps_to_run: int, samples_per_step: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self.samples_per_step = samples_per_step
        # runs too short for a warm-up are timed from their first step
        self.warmup = WARMUP_STEPS if steps_to_run > WARMUP_STEPS else 0
        self.steps = 0
        self.excluded = 0.0  # seconds spent on checkpoints between timed steps
        self.start = self.timed_from = clock()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the GPU's work, not only its queueing
        return self.clock()

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.timed_from = self._now()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Work that is not a training step (saving a checkpoint and progress.png) does not count."""
        start = self._now()
        try:
            yield
        finally:
            if self.steps >= self.warmup:  # after the timing started
                self.excluded += self._now() - start

    def summary(self) -> dict[str, Any]:
        end = self._now()
        timed = self.steps - self.warmup
        seconds = end - self.timed_from - self.excluded
        out: dict[str, Any] = {
            "device": str(self.device), "amp": self.device.type == "cuda", "steps_run": self.steps,
            "warmup_steps": self.warmup, "steps_timed": max(timed, 0), "samples_per_step": self.samples_per_step,
            "loop_seconds": end - self.start,
            "samples_per_second": timed * self.samples_per_step / seconds if timed > 0 and seconds > 0 else None,
            "seconds_per_step": seconds / timed if timed > 0 else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        }
        if self.device.type == "cuda":
            out["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        return out


def describe_performance(performance: dict[str, Any]) -> str:
    """One line for the training log."""
    speed = performance.get("samples_per_second")
    memory = (f"{performance['peak_gpu_allocated_gib']:.2f} GiB GPU memory allocated at peak"
              if "peak_gpu_allocated_gib" in performance else
              f"{performance['peak_rss_mib']:.0f} MiB resident memory at peak")
    return (f"throughput {'n/a' if speed is None else f'{speed:.2f}'} samples/s over {performance['steps_timed']} "
            f"step(s) after {performance['warmup_steps']} warm-up step(s); {memory}")
