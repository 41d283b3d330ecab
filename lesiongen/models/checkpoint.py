"""Checkpoint files: written atomically, read with ``weights_only=True`` (tensors and plain Python values only).

A checkpoint holds the raw and the EMA weights of a model's networks, the model's kind and configuration
(``model``), what produced it (``provenance``) and, while training, the optimiser, schedules and RNG states.
Format 1 (before models were split from trainers) had no ``model`` entry; :mod:`lesiongen.models.registry`
still loads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise LesiongenError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated, foreign or pickle-bearing file; say which and why in one line
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours parts of its message
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            reason = f"holds pickled Python objects that weights-only loading refuses ({unsafe.group(1)})"
        else:
            reason = f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"
        raise LesiongenError(f"{path}: not a readable lesiongen checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise LesiongenError(f"{path}: not a lesiongen checkpoint (format {FORMAT_VERSION} expected)")
    return state


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged network's own state dict out of an ``AveragedModel`` state dict."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
