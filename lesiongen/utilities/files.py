"""Atomic writes and JSON helpers.

Every output goes through a temporary file in the same folder followed by ``os.replace`` so that a killed run
never leaves a half-written file under the final name. Temporary names end in ``.partial`` so a later run can
clean them up. A write that fails for lack of space or permission ends in one line naming the file it was meant
to become (:class:`LesiongenError`), not in a traceback from deep inside numpy, blosc2 or torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
NO_SPACE = "no space left on device"
READ_ONLY = "read-only (or no permission)"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED_ERRNOS = frozenset({errno.EROFS, errno.EACCES})
# writers that report a failed write as a RuntimeError without an errno: torch.save's zip writer, blosc2, ITK
_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|"
                            r"Error while creating the NDArray|Error while (?:writing|appending|updating)|"
                            r"ImageFileWriter|File cannot be written|Error writing|failed to write")
_LOW_SPACE_BYTES = 4 * 1024**2  # a folder with less free space than this after a failed write counts as full
# leftovers of killed runs: ".NAME.TOKEN.partial[ENDING]" (files and staging folders), ".NAME.TOKEN.old" (folders)
_PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.partial(?:\.[^/]*)?$")
_RETIRED_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.old$")


def _temporary_sibling(path: Path) -> Path:
    # the real ending is kept last so that writers which infer the format from the name still work
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}{_ending(path)}")


def _ending(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".b2nd"):
        if name.endswith(double):
            return double
    return path.suffix


def os_error_message(exc: OSError) -> str | None:
    """What a full disk or a read-only folder means, in words (``"no space left on device"``), else None."""
    if exc.errno == errno.EDQUOT:
        return f"{NO_SPACE} (disk quota exceeded)"
    if exc.errno in _FULL_ERRNOS:
        return NO_SPACE
    if exc.errno in _DENIED_ERRNOS:
        return READ_ONLY
    return None


def _probe_folder(folder: Path) -> str | None:
    """Why writes into ``folder`` fail when the writer did not say (torch and blosc2 raise a bare RuntimeError)."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY or not os.access(folder, os.W_OK):
        return READ_ONLY
    if stats.f_bavail * stats.f_frsize < _LOW_SPACE_BYTES:
        return NO_SPACE
    return None


def _concerns(exc: OSError, path: Path, tmp: Path) -> bool:
    """Whether ``exc`` is about writing ``path`` (its temporary file or folder, or a folder above it), not about
    some input the writer read: a permission error on a source file must keep naming that file."""
    if exc.errno != errno.EACCES or exc.filename is None:
        return True  # no space and read-only file systems only ever concern writes
    failed = Path(os.fsdecode(exc.filename))
    return failed == path or failed.is_relative_to(tmp) or failed in path.parents


def write_failure(path: Path, exc: BaseException, tmp: Path | None = None) -> LesiongenError | None:
    """The one-line error for a write of ``path`` that failed for lack of space or permission; None for others."""
    if isinstance(exc, OSError):
        reason = os_error_message(exc)
        if reason is None or not _concerns(exc, path, tmp or path):
            return None
        return LesiongenError(f"{path}: {reason}")
    if isinstance(exc, RuntimeError) and _WRITE_FAILURE.search(str(exc)):
        reason = _probe_folder(path.parent)
        if reason is None:  # the last line is the most specific (ITK's first names its source file)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = f"the write failed ({lines[-1][:200] if lines else type(exc).__name__})"
        return LesiongenError(f"{path}: {reason}")
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on failure removed.

    A full disk or a read-only folder, however the writer reports it, becomes a :class:`LesiongenError` naming
    ``path``; whatever was at ``path`` before stays as it was.
    """
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        failure = write_failure(path, exc, tmp)  # probed before the temporary file frees its space
        if failure is None:
            raise
        raise failure from exc
    finally:
        _remove_quietly(tmp)


def _remove_quietly(tmp: Path) -> None:
    """Remove a temporary file; a failure here must not hide the error that made the write fail."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        logger.debug("could not remove %s: %s", tmp, exc)


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
    try:
        staging.mkdir()
        yield staging
        if path.exists():
            if not replace:  # appeared while the staging folder was written
                raise FileExistsError(path)
            os.replace(path, retired)
        os.replace(staging, path)
    except (OSError, RuntimeError) as exc:
        failure = write_failure(path, exc, staging)
        if failure is None:
            raise
        raise failure from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if retired.exists():
            if path.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:  # the new folder did not make it: the old one goes back
                os.replace(retired, path)


def remove_partial_files(folder: str | Path, targets: Collection[Path] | None = None) -> int:
    """Delete leftovers of killed runs below ``folder``; returns how many were removed.

    Leftovers are temporary files of :func:`atomic_path`, staging folders of :func:`atomic_folder` and the folders
    it retires (``.NAME.TOKEN.old``). A retired folder whose replacement never arrived (killed between the two
    renames) is put back under its name instead of being deleted, as :func:`atomic_folder` itself would have.
    Call it only while no other run writes below ``folder`` (see :mod:`lesiongen.utilities.locks`), or give
    ``targets``: then only leftovers of those final paths go (runs sharing a folder, each with its own files).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = None if targets is None else {Path(t) for t in targets}
    removed = 0
    for parent, dirs, files in os.walk(folder):
        here = Path(parent)
        for name in files:
            if _is_leftover(here, name, _PARTIAL_NAME, wanted):
                (here / name).unlink(missing_ok=True)
                removed += 1
        for name in list(dirs):
            if _is_leftover(here, name, _PARTIAL_NAME, wanted) or _is_leftover(here, name, _RETIRED_NAME, wanted):
                dirs.remove(name)  # do not descend into what is going away
                removed += _remove_leftover_folder(here / name)
    if removed:
        logger.info("removed %d unfinished file(s) or folder(s) of an earlier run below %s", removed, folder)
    return removed


def _is_leftover(parent: Path, name: str, pattern: re.Pattern, targets: set[Path] | None) -> bool:
    match = pattern.match(name)
    return match is not None and (targets is None or parent / match.group("name") in targets)


def _remove_leftover_folder(leftover: Path) -> int:
    retired = _RETIRED_NAME.match(leftover.name)
    if leftover.is_symlink():
        return 0
    if retired:
        original = leftover.with_name(retired.group("name"))
        if not original.exists():
            os.replace(leftover, original)  # the swap never finished: the old folder is still the valid one
            logger.info("restored %s from an interrupted replacement", original)
            return 0
    shutil.rmtree(leftover, ignore_errors=True)
    return 1


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
