"""Segmentation batches made ahead in spawned workers: the one-process order, and a failing or dying worker ends
the iteration with an error rather than a wait."""

from __future__ import annotations

import pytest

import _fault_workers
from _fault_workers import NumberedBatches, unchanged
from lesiongen.training.background import BackgroundBatches
from lesiongen.utilities.errors import LesiongenError

pytestmark = pytest.mark.timeout(120)  # a worker lost without an error used to be waited for forever


def _numbers(stream, count: int) -> list[int]:
    return [next(stream)["number"] for _ in range(count)]


def test_workers_batches_come_back_in_one_process_order_and_close_stops_them(monkeypatch):
    monkeypatch.setattr(_fault_workers, "PARENT_STATE", "changed by the parent")
    stream = BackgroundBatches(NumberedBatches(workers=2), unchanged, 2)
    assert next(stream) == {"number": 0, "state": "fresh"}  # spawned: nothing inherited from the trainer's process
    assert _numbers(stream, 6) == list(range(1, 7))
    stream.close()
    assert [process.exitcode for process in stream._workers] == [0, 0]  # stopped, not terminated
    with pytest.raises(StopIteration):
        next(stream)


def test_a_user_error_in_a_worker_reaches_the_trainer_as_its_one_line():
    stream = BackgroundBatches(NumberedBatches(workers=2, fail_at=3), unchanged, 2)
    assert _numbers(stream, 3) == [0, 1, 2]
    with pytest.raises(LesiongenError) as error:
        next(stream)
    assert str(error.value) == "/data/case_3.b2nd: checksum differs from the recorded one"
    assert not any(process.is_alive() for process in stream._workers)


def test_a_bug_in_a_worker_reaches_the_trainer_with_its_traceback():
    stream = BackgroundBatches(NumberedBatches(workers=2, fail_at=3, how="bug"), unchanged, 2)
    assert _numbers(stream, 3) == [0, 1, 2]
    with pytest.raises(RuntimeError, match=r"augmentation worker 1 failed:\n(.|\n)*ZeroDivisionError"):
        next(stream)


def test_a_dead_worker_is_an_error_not_a_hang():
    stream = BackgroundBatches(NumberedBatches(workers=2, fail_at=3, how="die"), unchanged, 2, poll_seconds=0.2)
    received = []
    with pytest.raises(LesiongenError, match=r"augmentation worker 1 died \(exit code 9"):
        for _ in range(4):  # worker 1 dies making batch 3, perhaps before its batch 1 left the process
            received.append(next(stream)["number"])
    assert received in ([0], [0, 1, 2])
    assert not any(process.is_alive() for process in stream._workers)
