"""Checkpoints: written atomically, read with ``weights_only=True`` (tensors and plain Python values only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"
FORMAT_VERSION = 1


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
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise LesiongenError(f"{path}: not a lesiongen checkpoint (format {FORMAT_VERSION} expected)")
    return state


def rng_state(numpy_rng: np.random.Generator, torch_generator: torch.Generator) -> dict[str, Any]:
    state = {"numpy": numpy_rng.bit_generator.state, "generator": torch_generator.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], numpy_rng: np.random.Generator, torch_generator: torch.Generator) -> None:
    numpy_rng.bit_generator.state = state["numpy"]
    torch_generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged network's own state dict out of an ``AveragedModel`` state dict."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
