"""Training batches made ahead in background processes, in the order one process would make them.

Kept apart from the loaders and augmentations it runs (``seg_data``) so that a worker's start-up imports only
what unpickling its loader needs.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from queue import Empty, Full
from typing import Protocol

from lesiongen.utilities.errors import LesiongenError


class BatchLoader(Protocol):
    """What a worker needs of a loader: its worker number, then its batches."""

    def set_thread_id(self, worker: int) -> None: ...

    def __next__(self) -> dict: ...


class BackgroundBatches:
    """Batches made ahead in ``num_workers`` spawned processes, returned in the order one process would make them.

    Worker w is told its number (``loader.set_thread_id(w)``, as batchgenerators' loaders are), makes the batches
    w, w + n, w + 2n, ... (``SegPatchLoader.next_batch_number``) as ``transforms(**next(loader))`` into a queue of
    its own, and the queues are read in turn. Spawn, not fork as batchgenerators' MultiThreadedAugmenter does: a
    forked child inherits the parent's thread pools without their threads, and a blosc2 read in a forked child can
    hang for good. A worker that fails or dies ends the iteration with an error instead of a wait.
    """

    def __init__(self, loader: BatchLoader, transforms: Callable[..., dict], num_workers: int, queue_size: int = 2,
                 poll_seconds: float = 0.5):
        context = multiprocessing.get_context("spawn")
        self._poll_seconds = poll_seconds
        self._stop = context.Event()
        self._queues = [context.Queue(queue_size) for _ in range(num_workers)]
        self._workers = [context.Process(target=_make_batches, args=(loader, transforms, worker, queue, self._stop),
                                         name=f"lesiongen-augmentation-{worker}", daemon=True)
                         for worker, queue in enumerate(self._queues)]
        for process in self._workers:
            process.start()
        self._turn = 0

    def __iter__(self) -> BackgroundBatches:
        return self

    def __next__(self) -> dict:
        if self._stop.is_set():
            raise StopIteration
        worker = self._turn % len(self._workers)
        queue, process = self._queues[worker], self._workers[worker]
        while True:
            alive = process.is_alive()  # asked before waiting: a batch finished just before dying is still read
            try:
                kind, payload = queue.get(timeout=self._poll_seconds)
                break
            except Empty:
                if not alive:
                    self.close()
                    raise LesiongenError(f"augmentation worker {worker} died (exit code {process.exitcode}; killed "
                                         "for lack of memory? try fewer with --set num_workers=N)") from None
        if kind == "batch":
            self._turn += 1
            return payload
        self.close()
        if kind == "user_error":
            raise LesiongenError(payload)
        raise RuntimeError(f"augmentation worker {worker} failed:\n{payload}")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (terminating any that do not stop within ``timeout`` seconds) and free the queues."""
        self._stop.set()
        for process in self._workers:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join()
        for queue in self._queues:
            queue.close()


def _make_batches(loader: BatchLoader, transforms: Callable[..., dict], worker: int, queue, stop) -> None:
    """A background worker: its share of the batches, into its queue, until ``stop`` is set."""
    import blosc2
    from threadpoolctl import threadpool_limits

    blosc2.set_nthreads(1)  # one thread per worker: the training process has the cores
    loader.set_thread_id(worker)
    with threadpool_limits(limits=1):
        while not stop.is_set():
            try:
                message = ("batch", transforms(**next(loader)))
            except LesiongenError as exc:
                message = ("user_error", str(exc))
            except Exception:
                message = ("error", traceback.format_exc())
            while not stop.is_set():
                try:
                    queue.put(message, timeout=0.1)
                    break
                except Full:
                    continue
            if message[0] != "batch":
                return  # the error is flushed to the trainer before the process ends
    queue.cancel_join_thread()  # asked to stop: a batch still in the pipe is not worth waiting for
