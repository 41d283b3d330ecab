"""Compressed arrays on disk (blosc2 ``.b2nd``): fast to write, chunked for random patch reads, no pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesiongen.utilities.files import atomic_path


def _cparams():
    import blosc2

    # zstd level 1 with byte shuffle: much smaller than raw float32 MRI at a small cost in time
    return {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}


def save_array(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (ending ``.b2nd``) atomically."""
    import blosc2

    with atomic_path(path) as tmp:
        blosc2.asarray(np.ascontiguousarray(array), urlpath=str(tmp), mode="w", cparams=_cparams())


def load_array(path: str | Path) -> np.ndarray:
    import blosc2

    return blosc2.open(str(path), mode="r")[...]


def open_array(path: str | Path):
    """A lazily read, sliceable handle (for patch sampling without loading the whole case)."""
    import blosc2

    return blosc2.open(str(path), mode="r")
