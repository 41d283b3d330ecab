"""The one process-pool helper every stage uses."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from lesiongen.utilities.errors import LesiongenError

T = TypeVar("T")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# where a process's CPU limit may be set: its cgroup (v2, or v1's cpu controller) or an ancestor of it. In a
# container the mount's root is the container's own cgroup; on a host a systemd slice may set the limit further down
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (else every core), capped by a
    container's or cgroup's CPU limit (the affinity mask still shows every core of the host)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def cgroup_cpu_limit(root: Path | None = None, membership: Path | None = None) -> int | None:
    """CPUs this process may use (quota over period, rounded up; the smallest over its cgroup and the cgroups above
    it), or None without a limit."""
    folders = _cgroup_folders(root or CGROUP_ROOT, membership or CGROUP_MEMBERSHIP)
    limits = [limit for limit in map(_cpu_limit_of, folders) if limit is not None]
    return min(limits) if limits else None


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """The cgroup folders that can limit this process's CPU: the mount roots, then its own cgroups (from
    ``/proc/self/cgroup``: ``0::/path`` for v2, ``N:cpu,cpuacct:/path`` for v1) and their ancestors."""
    folders = [root, root / "cpu", root / "cpu,cpuacct"]
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            bases = [root]
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu"]
        else:
            continue
        parts = Path(path.strip().lstrip("/")).parts
        folders += [base.joinpath(*parts[:depth]) for base in bases for depth in range(1, len(parts) + 1)]
    return list(dict.fromkeys(folders))


def _cpu_limit_of(folder: Path) -> int | None:
    """The CPU limit one cgroup folder sets (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    try:
        fields = (folder / "cpu.max").read_text().split()
    except OSError:
        try:
            fields = [(folder / "cpu.cfs_quota_us").read_text().strip(),
                      (folder / "cpu.cfs_period_us").read_text().strip()]
        except OSError:
            return None
    try:
        quota, period = fields[0], fields[1]
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, IndexError):
        return None


def thread_share(processes: int) -> dict[str, str]:
    """Environment variables that give each of ``processes`` side-by-side processes its share of the cores, so
    that processes x threads <= cores: torch's default of one OpenMP thread per core in every process
    oversubscribes them, and OpenMP barriers then wait for descheduled threads (documentation/scaling.md). They
    take effect in a process started with them (or set before it imports numpy and torch)."""
    threads = str(max(1, usable_cores() // max(1, processes)))
    return {variable: threads for variable in THREAD_VARIABLES}


def map_cases(
    function: Callable[..., T],
    items: Sequence[Any],
    num_processes: int,
    description: str,
    extra_args: Iterable[Any] = (),
    progress: bool = True,
) -> list[T]:
    """``[function(item, *extra_args) for item in items]`` over a spawn pool, in order, with a tqdm bar.

    Spawn (not fork) keeps workers free of whatever the parent imported (threads, CUDA); the functions run here
    import only numpy/scipy/SimpleITK, so start-up stays cheap. With one process it runs inline, which keeps
    tracebacks simple when debugging. A worker that dies (killed for memory, say) ends the call with an error;
    ``multiprocessing.Pool`` would replace the worker and wait forever for its lost result. A user error raised in
    a worker reaches the caller as a :class:`LesiongenError` with the same one-line message.
    """
    extra = tuple(extra_args)
    bar = tqdm(total=len(items), desc=description, disable=not progress, unit="case", leave=False)
    try:
        if num_processes <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(function(item, *extra))
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(min(num_processes, len(items)), mp_context=context)
        try:
            pending = [pool.submit(_in_worker, function, item, *extra) for item in items]
            results = []
            for job in pending:
                results.append(job.result())
                bar.update()
            return results
        except BrokenProcessPool as error:
            raise LesiongenError(f"{description}: a worker process died (killed for lack of memory? try fewer "
                                 "processes with -np)") from error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error: no new cases start
    finally:
        bar.close()


def _in_worker(function: Callable[..., T], item: Any, *extra: Any) -> T:
    """Run one case in a worker so that its error survives the trip back to the parent.

    The pool pickles a worker's exception; one whose class cannot be rebuilt from its message (``FileError(path,
    message)``, ``DatasetError(problems)``) would fail to unpickle, and the parent would report a dead worker
    instead of the user's error. A plain ``LesiongenError`` with the same message always makes it.
    """
    try:
        return function(item, *extra)
    except LesiongenError as exc:
        if type(exc) is LesiongenError:
            raise
        raise LesiongenError(str(exc)) from None
    except Exception as exc:
        if _survives_pickling(exc):
            raise
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc


def _survives_pickling(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True
