"""What the fault tests share: the one-line error check, real full and read-only file systems, a preprocessed copy.

Mounting needs root (and a container that allows it); where it is not allowed the test is skipped with the reason,
never left half-mounted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY, TINY_NAME

PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.(?:partial|old)")  # what atomic_path and atomic_folder leave
DATASET_ID = str(TINY.dataset_id)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a failed command's stderr (no traceback, no second error), without prefix."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0].removeprefix("error: ")


def leftovers(folder: Path) -> list[Path]:
    """Unfinished files or folders of a killed or failed run below ``folder``."""
    return [p for p in folder.rglob("*") if PARTIAL.search(p.name)]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


def _unmount(folder: Path) -> None:
    if _run("umount", str(folder)).returncode:
        _run("umount", "-l", str(folder))  # busy: detach now, the kernel frees it when the last user is gone


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (e.g. "64k") mounted at ``folder``: writes beyond it fail with ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if result.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        _unmount(folder)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for this process: chmod 0o555, or for root (whom permissions do not stop) a
    read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)
        return
    if _run("mount", "--bind", str(folder), str(folder)).returncode:
        pytest.skip("running as root, where chmod does not stop writes, and bind mounts are not permitted")
    try:
        result = _run("mount", "-o", "remount,bind,ro", str(folder))
        if result.returncode:
            pytest.skip(f"running as root and a read-only remount is not permitted: {result.stderr.strip()}")
        yield folder
    finally:
        _unmount(folder)


@pytest.fixture
def preprocessed_copy(_tiny_preprocessed_template, tmp_path, monkeypatch) -> dict[str, Path]:
    """This test's own copy of the planned and preprocessed tiny dataset (mtimes kept, so it is up to date)."""
    folders = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name in ("raw", "preprocessed"):
        shutil.copytree(_tiny_preprocessed_template[name], folders[name])
    folders["results"].mkdir()
    for name, folder in folders.items():
        monkeypatch.setenv(f"lesiongen_{name}", str(folder))
    folders["dataset"] = folders["preprocessed"] / TINY_NAME
    folders["data"] = folders["dataset"] / "lesiongenPlans"
    return folders
