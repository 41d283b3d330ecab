"""Which torch device a command runs on, and how CPU tensors are allocated there."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from typing import TYPE_CHECKING

from lesiongen.utilities.errors import LesiongenError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("cpu", "cuda", "mps")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


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


def reuse_cpu_tensor_memory() -> bool:
    """Let a process that runs a large network forward pass after forward pass on the CPU reuse its tensor memory.

    Every forward pass of a 3D U-Net allocates gigabytes of activations and frees them again. By default glibc
    gives each such block its own fresh mapping and unmaps it on free, so the kernel faults in and zero-fills every
    page again on every pass, a large share of the pass's CPU time. This makes torch put large tensors in
    transparent huge pages (its ``THP_MEM_ALLOC_ENABLE``; a value the user set is kept) and, with glibc, takes large
    blocks from the heap and keeps freed memory there (``mallopt``: no ``mmap``, no trimming), so the next pass
    reuses pages that are already mapped. The process then keeps its peak memory until it exits: for commands that
    predict, not for a library that lives on in someone else's process.

    Torch reads ``THP_MEM_ALLOC_ENABLE`` at its first allocation, so call this before any tensor exists. Returns
    whether glibc's allocator was adjusted.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        adjusted = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    except (OSError, AttributeError):
        adjusted = False
    logger.debug("CPU tensor memory: huge pages %s, glibc keeps freed memory: %s",
                 os.environ["THP_MEM_ALLOC_ENABLE"], adjusted)
    return adjusted
