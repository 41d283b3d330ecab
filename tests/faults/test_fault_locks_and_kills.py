"""One run per dataset or fold folder (flock, released by the kernel however the holder ends), and kill -9 at a
random point of preprocessing followed by a rerun that finishes with every checksum verifying."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _faults_common import (  # noqa: F401
    DATASET_ID, leftovers, one_error_line, preprocessed_copy,
)
from conftest import TINY_NAME, folder_digest
from lesiongen.cli.plan_and_preprocess import main_plan_and_preprocess, main_preprocess
from lesiongen.cli.train import main as main_train
from lesiongen.preprocessing.storage import CHECKSUMS, first_mismatch
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.locks import LOCK_NAME, exclusive_lock

# what `lesiongen_plan_and_preprocess` runs (the module has no __main__ block, so `python -m` would do nothing)
PLAN_AND_PREPROCESS = "import sys; from lesiongen.cli.plan_and_preprocess import main_plan_and_preprocess as m; m()"
HOLD_LOCK = ("import sys, time; from lesiongen.utilities.locks import exclusive_lock\n"
             "with exclusive_lock(sys.argv[1], 'test'):\n    print('locked', flush=True); time.sleep(120)")


def test_lock_excludes_a_second_holder_and_is_removed_on_release(tmp_path):
    folder = tmp_path / "dataset"
    with exclusive_lock(folder, "preprocessing"):
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\npreprocessing\n"
        with pytest.raises(LesiongenError) as info:
            with exclusive_lock(folder, "training"):
                pass
        assert str(info.value) == f"{folder}: already in use by another lesiongen run (pid {os.getpid()})"
    assert not (folder / LOCK_NAME).exists()
    with exclusive_lock(folder, "again"):  # free again
        pass


def test_a_waiting_lock_waits_for_the_holder_then_takes_the_lock(tmp_path):
    folder = tmp_path / "synthetic"
    order: list[str] = []
    holder = exclusive_lock(folder, "first")
    holder.__enter__()

    def second():
        with exclusive_lock(folder, "second", wait=True):
            order.append("second")

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and order == []  # blocked while the first one holds the folder
    order.append("first done")
    holder.__exit__(None, None, None)
    waiter.join(timeout=10)
    assert order == ["first done", "second"] and not (folder / LOCK_NAME).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "fold_0"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LesiongenError, match=rf"already in use by another lesiongen run \(pid {holder.pid}\)"):
            with exclusive_lock(folder, "training"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_NAME).exists()  # left behind by kill -9, but not locked: taken over
    with exclusive_lock(folder, "training"):
        assert (folder / LOCK_NAME).read_text().startswith(f"{os.getpid()}\n")


def test_preprocessing_a_dataset_in_use_stops_before_touching_it(preprocessed_copy, capsys):
    dataset = preprocessed_copy["dataset"]
    before = folder_digest(preprocessed_copy["data"])
    with exclusive_lock(dataset, "another run"):
        assert main_preprocess(["-d", DATASET_ID, "-np", "1", "--clean"])  # --clean would delete everything == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"{dataset}: already in use by another lesiongen run (pid {os.getpid()})"
    assert folder_digest(preprocessed_copy["data"]) == before


def test_training_a_fold_in_use_stops_at_once(preprocessed_copy, capsys):
    fold = preprocessed_copy["results"] / TINY_NAME / "spheremask__lesiongenPlans" / "fold_0"
    with exclusive_lock(fold, "another run"):
        assert main_train([DATASET_ID, "spheremask", "0", "-device", "cpu", "--steps", "1"]) == 1
        assert sorted(p.name for p in fold.iterdir()) == [LOCK_NAME]  # nothing written
    line = one_error_line(capsys.readouterr().err)
    assert line == f"{fold}: already in use by another lesiongen run (pid {os.getpid()})"


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``text`` shows up in ``log`` (the run got past its imports and checks) or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.02)


def _kill_during_preprocessing(log: Path, delay: float) -> int | None:
    """Start plan-and-preprocess, SIGKILL it ``delay`` s into its case loop; its exit code if it ended first."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", PLAN_AND_PREPROCESS, "-d", DATASET_ID, "-np", "1"],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=os.environ.copy())
    try:
        _wait_for(log, "preprocessing:", process)  # the case loop has started
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        code = process.wait(timeout=60)
    return None if code == -signal.SIGKILL else code


def test_kill_9_at_a_random_point_then_a_rerun_finishes_cleanly(preprocessed_copy, tmp_path, capsys,
                                                                 restore_logging):
    data = preprocessed_copy["data"]
    shutil.rmtree(data)  # the fingerprint and plans stay: the runs below preprocess (about half a second)
    seed = int(os.environ.get("LESIONGEN_FAULT_SEED", random.randrange(2**32)))  # set it to replay a failure
    delays = [random.Random(seed + i).uniform(0.0, 0.8) for i in range(2)]
    for attempt, delay in enumerate(delays):
        log = tmp_path / f"run_{attempt}.log"
        assert _kill_during_preprocessing(log, delay) in (None, 0), \
            f"seed {seed}: failed on its own:\n{log.read_text()}"
    assert main_plan_and_preprocess(["-d", DATASET_ID, "-np", "1"]) == 0, \
        f"seed {seed}, delays {delays}: {capsys.readouterr().err}"
    assert not leftovers(preprocessed_copy["preprocessed"]), f"seed {seed}, delays {delays}"
    assert not (preprocessed_copy["dataset"] / LOCK_NAME).exists()  # the killed runs' lock was taken over, released
    sidecars = sorted([*data.glob("training/*.json"), *data.glob("healthy/*.json")])
    assert len(sidecars) == 6, f"seed {seed}, delays {delays}"
    for sidecar in [*sidecars, *data.glob("lesion_patches/*.json")]:
        record = json.loads(sidecar.read_text())
        assert first_mismatch(sidecar.parent, record[CHECKSUMS]) is None, f"seed {seed}, delays {delays}: {sidecar}"
