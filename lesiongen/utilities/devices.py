"""Which torch device a command runs on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lesiongen.utilities.errors import LesiongenError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("cpu", "cuda", "mps")


def pick_device(name: str | None) -> "torch.device":
    """``cuda`` when present unless told otherwise; a clear error when the requested device is missing."""
    import torch  # here, not at the top: commands that never touch a network should not pay torch's import

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LesiongenError("-device cuda: no CUDA device is available; use -device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise LesiongenError("-device mps: MPS is not available; use -device cpu")
    return torch.device(name)
