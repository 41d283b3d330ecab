"""The one process-pool helper every stage uses."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


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
    tracebacks simple when debugging.
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
        with context.Pool(min(num_processes, len(items))) as pool:
            pending = [pool.apply_async(function, (item, *extra)) for item in items]
            results = []
            for job in pending:
                results.append(job.get())
                bar.update()
            return results
    finally:
        bar.close()
