"""One lesiongen run per folder: an advisory ``flock`` on ``FOLDER/.lesiongen.lock``.

Two runs preprocessing the same dataset, or training the same fold, would interleave their files (and one's
clean-up of leftovers would delete the other's unfinished writes), so the second one stops at once with a line
naming the folder and the process that holds it. A shared cache that both may fill (synthetic cases two seg runs
need) is locked with ``wait=True``: the second waits, then finds the first one's files. ``flock`` locks belong to
the open file: the kernel releases them when the holder exits however it ends (``kill -9`` included), so no stale
lock can block a later run. The file itself is removed on a clean exit; one left by a killed run is simply taken
over. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import write_failure

logger = logging.getLogger(__name__)

LOCK_NAME = ".lesiongen.lock"


class FolderLock:
    """A held lock on one folder; :meth:`release` (or leaving :func:`exclusive_lock`) gives it back."""

    def __init__(self, folder: Path, what: str, wait: bool = False):
        self.folder, self.what, self.wait = Path(folder), what, wait
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise ``FOLDER: already in use by another lesiongen run (pid N)``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                self._fd = self._try_lock()
        except OSError as exc:
            failure = write_failure(self.folder, exc, self.path)
            if failure is None:
                raise
            raise failure from exc
        try:  # only informs a second run; on a full disk the run's first real write names the problem better
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n{self.what}\n".encode())
        except OSError as exc:
            logger.debug("%s: could not write the pid (%s)", self.path, exc)
        logger.debug("locked %s for %s", self.folder, self.what)
        return self

    def _try_lock(self) -> int | None:
        """An open, locked descriptor of the lock file, or None when the file was replaced meanwhile (retry)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not self.wait:
                os.close(fd)
                raise LesiongenError(f"{self.folder}: already in use by another lesiongen run (pid {holder})") from None
            logger.info("%s: in use by another lesiongen run (pid %s); waiting for it", self.folder, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # the previous holder may have removed the file between our open and our lock: then ours is orphaned
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        return None

    def release(self) -> None:
        """Remove the lock file while still holding it (so no one locks a file about to vanish), then unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None
        logger.debug("unlocked %s", self.folder)


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ("unknown" if it has not written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 64, 0).decode()
        pid = text.split("\n", 1)[0].strip()
        if pid.isdigit():
            return pid
    return "unknown"


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, what: str, wait: bool = False) -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for the ``with`` block; ``what`` (e.g. "preprocessing") is written next to the pid.

    When another process holds it: with ``wait``, wait until it is released; else raise :class:`LesiongenError`
    naming the folder and the holder's pid.
    """
    lock = FolderLock(Path(folder), what, wait).acquire()
    try:
        yield lock
    finally:
        lock.release()
