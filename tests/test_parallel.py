"""The shared process pool: order, errors from a case, and a worker that dies."""

from __future__ import annotations

import os

import pytest

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities import parallel
from lesiongen.utilities.parallel import map_cases, thread_share

# multiprocessing.Pool used to wait forever for a dead worker's result: fail instead of hanging
pytestmark = pytest.mark.timeout(60)


def _square_plus(value: int, offset: int) -> int:
    return value * value + offset


def _fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError(f"case {value} is bad")
    return value


def _die_on_two(value: int) -> int:
    if value == 2:
        os._exit(9)  # what the kernel's OOM killer does to a worker, as far as the parent can tell
    return value


def test_results_keep_the_input_order():
    items = [5, 1, 4, 2, 3]
    assert map_cases(_square_plus, items, 2, "test", extra_args=(1,), progress=False) == [26, 2, 17, 5, 10]
    assert map_cases(_square_plus, items, 1, "test", extra_args=(1,), progress=False) == [26, 2, 17, 5, 10]


def test_an_error_in_a_case_reaches_the_caller():
    with pytest.raises(ValueError, match="case 3 is bad"):
        map_cases(_fail_on_three, [1, 2, 3, 4], 2, "test", progress=False)


def test_a_dead_worker_is_an_error_not_a_hang():
    with pytest.raises(LesiongenError, match="worker process died"):
        map_cases(_die_on_two, [1, 2, 3, 4], 2, "checking", progress=False)


@pytest.mark.parametrize("cores, processes, threads", [(2, 2, "1"), (2, 1, "2"), (8, 3, "2"), (2, 8, "1")])
def test_side_by_side_processes_share_the_cores(monkeypatch, cores, processes, threads):
    monkeypatch.setattr(parallel, "usable_cores", lambda: cores)
    assert thread_share(processes) == {variable: threads for variable in parallel.THREAD_VARIABLES}


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "150000 100000\n"}, 2), ({"cpu.max": "50000 100000\n"}, 1), ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.cfs_quota_us": "400000\n", "cpu.cfs_period_us": "100000\n"}, 4),
    ({"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}, None), ({}, None)])
def test_a_containers_cpu_limit_caps_the_usable_cores(tmp_path, monkeypatch, files, limit):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(parallel, "CGROUP_CPU_LIMITS", ((str(tmp_path / "cpu.max"), None),
                                                       (str(tmp_path / "cpu.cfs_quota_us"),
                                                        str(tmp_path / "cpu.cfs_period_us"))))
    assert parallel.cgroup_cpu_limit() == limit
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert parallel.usable_cores() == (limit or 64)


def test_each_xdist_worker_runs_torch_on_its_share_of_the_cores():
    """The README runs the tests with ``-n auto``; tests/conftest.py must give each worker's torch (and the console
    scripts it starts) its share of the cores: all of them in every worker made the suite slower, not faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not workers:
        pytest.skip("runs under pytest-xdist (python -m pytest -n auto)")
    import torch

    share = max(1, parallel.usable_cores() // workers)
    assert os.environ["OMP_NUM_THREADS"] == str(share) and torch.get_num_threads() == share
