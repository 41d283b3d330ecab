"""Progress reports with a clock the test moves: the training loop's throughput (warm-up and checkpoint saves left
out)."""

from __future__ import annotations


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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
