"""User-facing errors: the CLI prints these as one line each, without a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LesiongenError(Exception):
    """An error caused by the user's input or set-up, reported as a clear message and a non-zero exit."""


@dataclass(frozen=True)
class Problem:
    """One problem with one file of a dataset."""

    path: str
    message: str
    is_warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.is_warning else ""
        return f"{prefix}{self.path}: {self.message}"


class FileError(LesiongenError):
    """A single file is unreadable or invalid."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class DatasetError(LesiongenError):
    """A dataset has one or more problems; each is one line of the message.

    The CLI prints the message after ``error: `` (``cli.common.run_command``), so the errors come first and every
    error after the first carries its own ``error: `` prefix: one ``error:`` line per error. Warnings follow as
    ``warning: PATH: ...`` lines, never under an ``error:`` prefix, then a summary line.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [f"{p.path}: {p.message}" for p in problems if not p.is_warning]
        warnings = [f"warning: {p.path}: {p.message}" for p in problems if p.is_warning]
        summary = f"{len(errors)} problem(s) found; nothing was written."
        if not errors:  # only warnings: the summary takes the printed "error: " prefix
            super().__init__("\n".join([summary, *warnings]))
            return
        super().__init__("\n".join(["\nerror: ".join(errors), *warnings, summary]))
