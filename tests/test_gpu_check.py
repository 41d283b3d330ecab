"""benchmarks/gpu_check.py: one failing or overrunning stage never ends the check, and ``--tiny -device cpu`` runs
every stage (training, CPU reload, prediction) through the console scripts and records what it asked for.

The end-to-end run starts about a dozen console-script processes (diffmask's thresholds fitted on 4 patches to
keep it short); it is the suite's slowest test (its time: README, "The prepared GPU check").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BENCHMARKS, load_benchmark


def gpu_check():
    return load_benchmark("gpu_check")


def test_a_failing_or_overrunning_stage_is_recorded_and_the_next_one_runs():
    check = gpu_check()
    stages = check.Stages(budget_seconds=120)
    stages.run("crash", "train", lambda limit: {"value": 1 / 0})
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.perf_counter()
    stages.run("overrun", "train", lambda limit: check.run_command(sleeper, {}, 1.0))
    assert time.perf_counter() - started < 30  # killed after its limit, not waited for
    stages.run("exit", "train", lambda limit: check.run_command([sys.executable, "-c", "raise SystemExit(3)"], {},
                                                                 limit))
    stages.run("fine", "train", lambda limit: {"value": 7, "limit_seen": limit})
    results = stages.results
    assert results["crash"]["ok"] is False and results["crash"]["error"].startswith("ZeroDivisionError")
    assert results["overrun"]["ok"] is False and results["overrun"]["error"] == "timed out after 1 s"
    assert results["exit"]["ok"] is False and results["exit"]["error"] == "exit 3"
    assert results["fine"]["ok"] is True and results["fine"]["value"] == 7
    assert results["fine"]["limit_seen"] == pytest.approx(check.STAGE_SHARES["train"] * 120)


def test_a_stage_gets_no_more_than_what_is_left_of_the_budget():
    check = gpu_check()
    stages = check.Stages(budget_seconds=100)
    stages.deadline -= 95  # as if 95 s were spent: 5 s left, less than the stage's share of 20 s
    limits = []
    stages.run("late", "train", lambda limit: limits.append(limit) or {})
    stages.deadline -= 5
    stages.run("too_late", "train", lambda limit: limits.append(limit) or {})
    assert len(limits) == 1 and 4 < limits[0] <= 5
    assert stages.results["too_late"]["ok"] is False and "budget is spent" in stages.results["too_late"]["error"]


def test_profile_top_ranks_functions_by_their_own_time(tmp_path):
    script = tmp_path / "work.py"
    script.write_text("import time\n\ndef waits():\n    time.sleep(0.3)\n\ndef adds():\n"
                      "    return sum(range(10_000))\n\nwaits()\nfor _ in range(5):\n    adds()\n")
    profile = tmp_path / "work.prof"
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), str(script)], check=True, timeout=60)
    top = gpu_check().profile_top(profile, n=3)
    assert len(top) == 3
    assert top[0]["function"] == "~:0(<built-in method time.sleep>)" and top[0]["own_seconds"] >= 0.29
    adds = gpu_check().profile_top(profile, n=100)
    assert [row["calls"] for row in adds if row["function"].endswith("(adds)")] == [5]


@pytest.mark.timeout(900)  # the suite's slowest test: ten console scripts end to end
def test_tiny_check_on_cpu_runs_every_stage(tmp_path):
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("lesiongen_")}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--tiny", "-device", "cpu", "--steps",
                           "3", "--json", str(out), "--work", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    stages = report["stages"]
    failed = {name: stage.get("error") for name, stage in stages.items() if stage.get("ok") is False}
    assert failed == {}
    assert report["provenance"]["from_scratch"] and report["provenance"]["lesiongen_version"]
    for trainer in ("unetmask", "diffmask", "inpaint", "seg"):
        stage = stages[f"train_{trainer}"]
        assert stage["steps_asked"] == stage["steps_trained"] == 3
        assert stage["performance"]["steps_run"] == 3 and stage["performance"]["samples_per_second"] > 0
    assert stages["train_spheremask"]["steps_trained"] == 0  # nothing to train: priors only
    assert stages["train_diffmask"]["calibration"]["patches"] == 4
    reload = stages["cpu_reload"]
    assert reload["cuda_visible"] is False
    assert sorted(reload["models"]) == ["diffmask", "inpaint", "seg_none", "spheremask", "unetmask"]
    assert all(model["ok"] for model in reload["models"].values())
    assert reload["models"]["seg_none"]["output_shape"][0] == 2  # background and lesion probabilities
    assert stages["predict_seg"]["scans"] == 1 and stages["predict_synth"]["lesions"] >= 1
    # both healthy scans in one group: the same lesions as one at a time
    synth, batched = stages["predict_synth"], stages["predict_synth_batched"]
    assert synth["scans"] == batched["scans"] == 2 and "--batch_scans 2" in batched["command"]
    assert "--batch_scans 1" in synth["command"]
    assert batched["lesions"] == synth["lesions"]
    assert "samples/s" in done.stdout and "cpu_reload      ok: 5 of 5" in done.stdout
    profiled = stages["predict_synth_profiled"]
    assert profiled["lesions"] == synth["lesions"] and "cProfile" in profiled["command"]
    own = [row["own_seconds"] for row in profiled["profile_top"]]
    assert own == sorted(own, reverse=True) and 0 < sum(own) <= profiled["wall_seconds"]
    assert "where -m synth spends" in done.stdout
