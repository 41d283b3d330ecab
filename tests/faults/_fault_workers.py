"""Case functions for the process-pool tests, in a module of their own: spawned workers import the module of the
function they run, and this one imports nothing heavy (a test module importing torch costs seconds per worker)."""

from __future__ import annotations

from lesiongen.utilities.errors import FileError


def file_error_on_two(value: int) -> int:
    """A user error whose class cannot be rebuilt from its pickle (``FileError(path, message)``)."""
    if value == 2:
        raise FileError(f"/data/case_{value}.nii.gz", "not a NIfTI file")
    return value


# set by a test in the parent: a forked worker would inherit the change, a spawned one imports the module afresh
PARENT_STATE = "fresh"


class NumberedBatches:
    """A stand-in for ``SegPatchLoader`` in ``BackgroundBatches``: batch n is ``{"number": n, "state": the worker's
    PARENT_STATE}``, worker w of
    ``workers`` makes w, w + workers, ...; batch ``fail_at`` raises a user error (``how="user_error"``), a bug
    (``"bug"``) or kills its worker (``"die"``)."""

    def __init__(self, workers: int, fail_at: int | None = None, how: str = "user_error"):
        self.workers, self.fail_at, self.how = workers, fail_at, how
        self.number = 0

    def set_thread_id(self, worker: int) -> None:
        self.number = worker

    def __next__(self) -> dict:
        number, self.number = self.number, self.number + self.workers
        if number == self.fail_at:
            if self.how == "die":
                import os

                os._exit(9)  # what the kernel's OOM killer does to a worker, as far as the parent can tell
            if self.how == "bug":
                raise ZeroDivisionError("division by zero in batch 3")
            raise FileError(f"/data/case_{number}.b2nd", "checksum differs from the recorded one")
        return {"number": number, "state": PARENT_STATE}


def unchanged(**batch) -> dict:
    """The identity augmentation."""
    return batch
