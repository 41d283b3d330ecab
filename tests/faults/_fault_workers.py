"""Case functions for the process-pool tests, in a module of their own: spawned workers import the module of the
function they run, and this one imports nothing heavy (a test module importing torch costs seconds per worker)."""

from __future__ import annotations

from lesiongen.utilities.errors import FileError


def file_error_on_two(value: int) -> int:
    """A user error whose class cannot be rebuilt from its pickle (``FileError(path, message)``)."""
    if value == 2:
        raise FileError(f"/data/case_{value}.nii.gz", "not a NIfTI file")
    return value
