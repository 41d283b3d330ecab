"""Atomic writes and JSON helpers.

Every output goes through a temporary file in the same folder followed by ``os.replace`` so that a killed run
never leaves a half-written file under the final name. Temporary names end in ``.partial`` so a later run can
clean them up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL_SUFFIX = ".partial"


def _temporary_sibling(path: Path) -> Path:
    # the real ending is kept last so that writers which infer the format from the name still work
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}{_ending(path)}")


def _ending(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".b2nd"):
        if name.endswith(double):
            return double
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder next to ``path``; on success it takes ``path``'s place, on failure it is removed.

    With ``replace`` an existing ``path`` is swapped out and deleted only once the new folder is in place (and put
    back if the swap fails); without it an existing ``path`` is an error, checked again just before the swap.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = path.with_name(f".{path.name}.{token}{PARTIAL_SUFFIX}")
    retired = path.with_name(f".{path.name}.{token}.old")
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            if not replace:  # appeared while the staging folder was written
                raise FileExistsError(path)
            os.replace(path, retired)
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if retired.exists():
            if path.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:  # the new folder did not make it: the old one goes back
                os.replace(retired, path)


def remove_partial_files(folder: str | Path) -> int:
    """Delete leftovers of killed runs below ``folder``; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for leftover in folder.rglob(f"*{PARTIAL_SUFFIX}*"):
        if leftover.is_file() and leftover.name.startswith("."):
            leftover.unlink()
            removed += 1
    return removed


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` (dataclasses, numpy scalars and arrays allowed) as JSON, atomically."""
    text = json.dumps(obj, default=_json_default, indent=indent, sort_keys=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None (JSON has no NaN); dict keys become strings."""
    if isinstance(obj, dict):
        return {str(k): nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_plain(obj: Any) -> Any:
    """``obj`` as plain JSON types (string keys, lists, str, int, float, bool, None; NaN becomes None).

    Checkpoints carry such values next to tensors, and ``torch.load(weights_only=True)`` refuses numpy scalars.
    """
    return nan_to_none(json.loads(json.dumps(obj, default=_json_default)))


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def file_signature(paths: list[str | Path]) -> list[list[Any]]:
    """A cheap fingerprint of input files (name, size, mtime) to decide whether an output is up to date."""
    signature = []
    for p in paths:
        st = os.stat(p)
        signature.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return signature
