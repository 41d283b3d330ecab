"""What produced a result: the code (lesiongen version, git commit), the plans (name and hash) and the models
(sha256 of each checkpoint). Every checkpoint, synthetic case, report and benchmark JSON carries such a record,
and a cached result whose record does not match what is asked is redone instead of reused."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import lesiongen

_CHUNK = 1 << 20


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """lesiongen's version, the sha256 of its source (:func:`source_sha256`) and, in a git checkout, its commit and
    whether the working tree had changes."""
    source = Path(lesiongen.__file__).resolve().parent
    record: dict[str, Any] = {"lesiongen_version": lesiongen.__version__, "source_sha256": source_sha256(source),
                              "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            record["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=source,
                                    capture_output=True, text=True, timeout=10)
            record["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: the version alone says it
        pass
    return record


def source_sha256(package: Path | None = None) -> str:
    """sha256 of a package's Python source (lesiongen's own by default, as it is on disk now, not cached): every
    ``.py`` file under ``package``, by relative path and content. Unlike the git commit it changes with uncommitted
    edits and not with commits that leave the code as it was (documentation, benchmarks), and it exists without git
    (an installed wheel)."""
    package = package or Path(lesiongen.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order and formatting."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_record(path: str | Path, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """How a result names a model it used: its checkpoint path, sha256 and, when known, trainer and steps."""
    record: dict[str, Any] = {"checkpoint": str(path), "sha256": sha256_file(path)}
    if provenance:
        for key in ("trainer", "variant", "fold", "steps_trained", "seed", "plans_name", "plans_sha256", "git_commit"):
            if key in provenance:
                record[key] = provenance[key]
    return record
