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
    root = tmp_path / "cgroup"  # inside a container: the mount's root is the container's own cgroup
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    monkeypatch.setattr(parallel, "CGROUP_ROOT", root)
    monkeypatch.setattr(parallel, "CGROUP_MEMBERSHIP", tmp_path / "no_such_file")
    assert parallel.cgroup_cpu_limit() == limit
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert parallel.usable_cores() == (limit or 64)


@pytest.mark.parametrize("membership, files, limit", [
    # cgroup v2 on a host: a slice above the process's own cgroup sets the limit
    ("0::/system.slice/job.service\n", {"system.slice/cpu.max": "300000 100000\n",
                                        "system.slice/job.service/cpu.max": "max 100000\n"}, 3),
    # the smallest limit on the way up wins
    ("0::/a/b\n", {"a/cpu.max": "100000 100000\n", "a/b/cpu.max": "400000 100000\n"}, 1),
    # cgroup v1: the cpu controller's hierarchy, the memory controller's ignored
    ("5:memory:/user/job\n4:cpu,cpuacct:/user/job\n",
     {"cpu,cpuacct/user/job/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/user/job/cpu.cfs_period_us": "100000\n",
      "memory/user/job/cpu.max": "100000 100000\n"}, 3),
    ("0::/free\n", {"free/cpu.max": "max 100000\n"}, None),
])
def test_a_cgroup_below_the_root_caps_the_cpus(tmp_path, membership, files, limit):
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "membership").write_text(membership)
    assert parallel.cgroup_cpu_limit(root, tmp_path / "membership") == limit


def test_each_xdist_worker_runs_torch_on_its_share_of_the_cores():
    """The README runs the tests with ``-n auto``; tests/conftest.py must give each worker's torch (and the console
    scripts it starts) its share of the cores: all of them in every worker made the suite slower, not faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not workers:
        pytest.skip("runs under pytest-xdist (python -m pytest -n auto)")
    import torch

    share = max(1, parallel.usable_cores() // workers)
    assert os.environ["OMP_NUM_THREADS"] == str(share) and torch.get_num_threads() == share
