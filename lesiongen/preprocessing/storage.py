"""Compressed arrays on disk (blosc2 ``.b2nd``): fast to write, chunked for random patch reads, no pickle.

Every file a preprocessed (or synthetic) case consists of is recorded with its byte size and sha256 in the case's
JSON sidecar (``"checksums": {name: {"size": n, "sha256": hex}}``, names relative to the sidecar's folder). A rerun
redoes a case whose files do not match, and training refuses them: a truncated or bit-flipped array is never
trusted, whatever blosc2 would make of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path

logger = logging.getLogger(__name__)

CHECKSUMS = "checksums"  # the sidecar entry
_HASH_CHUNK = 1024**2
_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_")
MISMATCH = "size/checksum does not match its record (corrupt or changed since preprocessing)"


def _cparams():
    import blosc2

    # zstd level 1 with byte shuffle: much smaller than raw float32 MRI at a small cost in time
    return {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}


def save_array(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (ending ``.b2nd``) atomically."""
    import blosc2

    with atomic_path(path) as tmp:
        blosc2.asarray(np.ascontiguousarray(array), urlpath=str(tmp), mode="w", cparams=_cparams())


def _unreadable(path: str | Path, exc: Exception) -> LesiongenError:
    """blosc2 reports a truncated or damaged file as ``RuntimeError: blosc2_schunk_open_offset(...) returned
    NULL`` and the like; say which file, in one line."""
    if isinstance(exc, FileNotFoundError):
        return LesiongenError(f"{path}: not found")
    text = " ".join(str(exc).split()) or type(exc).__name__
    return LesiongenError(f"{path}: not a readable blosc2 array, truncated or corrupt ({text[:200]})")


def load_array(path: str | Path) -> np.ndarray:
    import blosc2

    try:
        return blosc2.open(str(path), mode="r")[...]
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from exc


def open_array(path: str | Path):
    """A lazily read, sliceable handle (for patch sampling without loading the whole case)."""
    import blosc2

    try:
        return blosc2.open(str(path), mode="r")
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from exc


# ---------------------------------------------------------------------------------------------------- checksums
def file_record(path: str | Path) -> dict[str, int | str]:
    """Byte size and sha256 of ``path``, read in 1 MiB chunks (cheap next to writing the file)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def checksum_files(folder: Path, names: Iterable[str]) -> dict[str, dict[str, int | str]]:
    """``{name: record}`` for files named relative to ``folder`` (the sidecar's folder), for its ``checksums``."""
    return {name: file_record(Path(folder) / name) for name in names}


def case_checksums(stem: str | Path) -> dict[str, dict[str, int | str]]:
    """The records of a training case's own files (``{stem}.b2nd``, ``_seg.b2nd``, ``_locations.npz``, and
    ``_tissue.b2nd`` when present), as its ``{stem}.json`` should hold them (synthetic cases use this)."""
    stem = Path(stem)
    names = [f"{stem.name}{ending}" for ending in (".b2nd", "_seg.b2nd", "_locations.npz", "_tissue.b2nd")]
    return checksum_files(stem.parent, [n for n in names if (stem.parent / n).is_file()])


def first_mismatch(folder: Path, records: dict[str, dict]) -> tuple[Path, str] | None:
    """The first recorded file that is missing or differs from its record, with the problem; None if all match.

    Sizes are compared first (a stat each), so a truncated file is found without hashing the others.
    """
    paths = {name: Path(os.path.normpath(Path(folder) / name)) for name in records}  # '../lesion_patches/..'
    for name, path in paths.items():
        if not path.is_file():
            return path, "missing"
        if path.stat().st_size != records[name].get("size"):
            return path, MISMATCH
    for name, path in paths.items():
        if file_record(path)["sha256"] != records[name].get("sha256"):
            return path, MISMATCH
    return None


def rerun_advice(path: Path) -> str:
    """What redoes a preprocessed file: the preprocessing of its dataset (found from the path)."""
    for part in reversed(Path(path).parts):
        match = _DATASET_FOLDER.match(part)
        if match:
            return f"rerun lesiongen_preprocess -d {int(match.group(1))}"
    return "rerun lesiongen_preprocess for its dataset"


def verify_files(sidecar: Path, records: dict[str, dict] | None, advice: str | None = None) -> None:
    """Raise a one-line :class:`LesiongenError` when a file recorded in ``sidecar`` does not match its record.

    ``records`` None means a sidecar from before checksums were recorded: accepted, with a debug note.
    """
    if records is None:
        logger.debug("%s: no checksums recorded (written by an older lesiongen); files not verified", sidecar)
        return
    found = first_mismatch(sidecar.parent, records)
    if found is not None:
        path, problem = found
        raise LesiongenError(f"{path}: {problem}; {advice or rerun_advice(path)}")
