"""Progress reports with a clock the test moves: the ETA log lines (when they come, what they estimate) and the
training loop's throughput (warm-up and checkpoint saves left out)."""

from __future__ import annotations

import logging

from lesiongen.utilities.progress_log import ProgressLog, format_seconds


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_logs_first_unit_then_every_interval_then_the_end_with_a_linear_eta(caplog):
    clock = Clock()
    progress = ProgressLog(logging.getLogger("lesiongen.test"), "calibration", total=4, unit="batches",
                           interval=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="lesiongen.test"):
        for now in (10.0, 20.0, 45.0, 50.0):
            clock.now = now
            progress.advance()
    assert caplog.messages == [
        "calibration: 1/4 batches (25%), 10s elapsed, about 30s left",  # 10 s per batch, 3 to go
        "calibration: 3/4 batches (75%), 45s elapsed, about 15s left",  # 20 s is within the interval: silent
        "calibration: 4/4 batches (100%), 50s elapsed",
    ]


def test_update_takes_counts_from_a_callback(caplog):
    clock = Clock()
    progress = ProgressLog(logging.getLogger("lesiongen.test"), "sampling", clock=clock)
    with caplog.at_level(logging.INFO, logger="lesiongen.test"):
        clock.now = 125.0
        progress.update(5, 20)
    assert caplog.messages == ["sampling: 5/20 (25%), 2m05s elapsed, about 6m15s left"]


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 61, 3599, 3600, 7620)] == ["0s", "59s", "1m01s", "59m59s",
                                                                              "1h00m", "2h07m"]


def test_throughput_skips_warm_up_steps_and_checkpoint_saves():
    import torch

    from lesiongen.training.progress import ThroughputMeter

    clock = Clock()
    meter = ThroughputMeter(torch.device("cpu"), steps_to_run=6, samples_per_step=4, clock=clock)
    for step, seconds in enumerate((9.0, 5.0, 1.0, 1.0, 1.0, 1.0), 1):  # two slow warm-up steps, then 1 s each
        clock.now += seconds
        meter.step_done()
        if step in (2, 4):  # checkpoint saves of 7 s: at the step the timing starts, and later
            with meter.untimed():
                clock.now += 7.0
    summary = meter.summary()
    assert summary["warmup_steps"] == 2 and summary["steps_timed"] == 4
    assert summary["seconds_per_step"] == 1.0 and summary["samples_per_second"] == 4.0
    assert summary["loop_seconds"] == 32.0


def test_throughput_of_a_run_too_short_for_a_warm_up_counts_every_step():
    import torch

    from lesiongen.training.progress import ThroughputMeter

    clock = Clock()
    meter = ThroughputMeter(torch.device("cpu"), steps_to_run=2, samples_per_step=3, clock=clock)
    for _ in range(2):
        clock.now += 2.0
        meter.step_done()
    summary = meter.summary()
    assert summary["warmup_steps"] == 0 and summary["steps_timed"] == 2 and summary["samples_per_second"] == 1.5
