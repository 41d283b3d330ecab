"""Distilling diffmask's 20-step sampler into a 4-step student network (issue 15's third route to few steps).

The teacher (the trained network with DPM-Solver++, 20 steps) samples a bank of trajectories from training patches'
sphere controls; its states at the student's four timesteps and its final mask are kept. At each of its timesteps
the student learns the clean estimate whose deterministic DDIM step lands exactly on the teacher's next state
(:func:`lesiongen.diffusion.schedules.distillation_target`), so four student steps retrace the teacher's twenty
and the student's masks are as close to the real lesions as the teacher's, instead of whatever a 4-step sampler of
the teacher's network happens to give. One jump from the teacher to the student (not progressive halving): the
bank costs 20 teacher evaluations per trajectory once, after which a student step costs what a training step does.
The student starts from the teacher's weights. Optionally (``real_fraction``) part of each batch is real training
patches noised to the student's timesteps, whose target is their real mask: plain diffusion training at those
timesteps, pulling the student towards the real lesions where the teacher's samples differ from them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesiongen.diffusion.schedules import ScheduleConfig, distillation_target
from lesiongen.training.base import clipped_step
from lesiongen.utilities.progress_log import ProgressLog

logger = logging.getLogger("lesiongen.training")

# (squared error, lesion region) -> (loss, parts to log): the trainer's own loss, so the student weighs lesion voxels
# as its teacher was trained to
StudentLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
# (rng, timesteps (b,)) -> b real training patches noised to those timesteps: (states (b, K, z, y, x), their clean
# masks (b, K, z, y, x), sphere controls (b, z, y, x), tissue maps (b, z, y, x) or None)
RealBatch = Callable[[np.random.Generator, np.ndarray],
                     tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]


@dataclass
class TeacherBank:
    """What the student learns from: per trajectory its condition, the teacher's states at the student's timesteps
    and, per student step, the clean estimate that step must give."""
    controls: np.ndarray  # (n, z, y, x) sphere controls
    tissue: np.ndarray | None  # (n, z, y, x) tissue maps, or None
    states: np.ndarray  # (n, S, K, z, y, x) the teacher's states at the student's S timesteps
    targets: np.ndarray  # (n, S, K, z, y, x) the student's clean estimate for each of them
    timesteps: tuple[int, ...]  # the student's timesteps, first (noisiest) first

    def __len__(self) -> int:
        return len(self.controls)

    @property
    def final(self) -> np.ndarray:
        """(n, K, z, y, x) the teacher's denoised mask: the last step's target."""
        return self.targets[:, -1]


def student_targets(trajectories: np.ndarray, timesteps: tuple[int, ...], student: ScheduleConfig) -> np.ndarray:
    """(n, S, K, ...) targets from teacher trajectories (n, S + 1, K, ...): the states at the student's S timesteps
    and the teacher's final mask; the last step's target is that mask itself."""
    states = torch.from_numpy(trajectories)
    ends = [*timesteps[1:], -1]
    return np.stack([distillation_target(states[:, k], states[:, k + 1], t, s, student).numpy()
                     for k, (t, s) in enumerate(zip(timesteps, ends))], axis=1)


def build_teacher_bank(sample_trajectories: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
                       controls: np.ndarray, tissue: np.ndarray | None, student: ScheduleConfig) -> TeacherBank:
    """The bank for the given conditions; ``sample_trajectories(controls, tissue)`` runs the teacher and returns its
    states at ``student.trained_timesteps`` and its final mask, (n, S + 1, K, ...)."""
    timesteps = tuple(int(t) for t in student.trained_timesteps)  # a short schedule's, noisiest first
    trajectories = sample_trajectories(controls, tissue)
    return TeacherBank(controls=controls, tissue=tissue, states=trajectories[:, :-1],
                       targets=student_targets(trajectories, timesteps, student), timesteps=timesteps)


def as_sampled(prediction: torch.Tensor, last_step: torch.Tensor) -> torch.Tensor:
    """What the student's sampler makes of its clean estimates (b, K, z, y, x): at the last step the estimate is the
    sample, which ends clamped to [-1, 1] as masks are, so overshooting it costs nothing; earlier estimates enter an
    unclipped DDIM step as they are. ``last_step`` (b,) marks the samples of the last step."""
    return torch.where(last_step.view(-1, *([1] * (prediction.ndim - 1))), prediction.clamp(-1, 1), prediction)


@dataclass
class DistillationSettings:
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    grad_clip: float
    seed: int
    # share of each batch drawn from real training patches instead of the teacher's bank (needs a RealBatch)
    real_fraction: float = 0.0

    def real_per_batch(self) -> int:
        """Real samples in each batch: at least one for any positive share."""
        if self.real_fraction <= 0:
            return 0
        return min(self.batch_size, max(1, round(self.real_fraction * self.batch_size)))


@dataclass
class StudentBatch:
    states: np.ndarray  # (b, K, z, y, x) noisy masks at ``timesteps``
    targets: np.ndarray  # (b, K, z, y, x) the clean estimate each must give
    finals: np.ndarray  # (b, K, z, y, x) the lesion each ends on: the teacher's final mask, or the real one
    controls: np.ndarray  # (b, z, y, x)
    tissue: np.ndarray | None
    timesteps: np.ndarray  # (b,)
    last_step: np.ndarray  # (b,) bool: samples of the student's last step


def student_batch(bank: TeacherBank, rng: np.random.Generator, batch_size: int, real_count: int = 0,
                  real_batch: RealBatch | None = None) -> StudentBatch:
    """One batch: random trajectories of the bank at random student steps, the last ``real_count`` samples real
    patches from ``real_batch`` instead."""
    timesteps = np.asarray(bank.timesteps)
    items = rng.integers(0, len(bank), size=batch_size - real_count)
    steps = rng.integers(0, len(timesteps), size=batch_size)
    bank_steps = steps[:len(items)]
    batch = StudentBatch(states=bank.states[items, bank_steps], targets=bank.targets[items, bank_steps],
                         finals=bank.final[items], controls=bank.controls[items],
                         tissue=None if bank.tissue is None else bank.tissue[items], timesteps=timesteps[steps],
                         last_step=steps == len(timesteps) - 1)
    if real_count:
        states, clean, controls, tissue = real_batch(rng, timesteps[steps[len(items):]])
        batch.states = np.concatenate([batch.states, states])
        batch.targets = np.concatenate([batch.targets, clean])
        batch.finals = np.concatenate([batch.finals, clean])
        batch.controls = np.concatenate([batch.controls, controls])
        batch.tissue = None if batch.tissue is None else np.concatenate([batch.tissue, tissue])
    return batch


def distill_student(teacher: nn.Module, bank: TeacherBank,
                    network_input: Callable[[torch.Tensor, np.ndarray, np.ndarray | None], torch.Tensor],
                    loss_fn: StudentLoss, settings: DistillationSettings, device: torch.device,
                    amp: bool = False, real_batch: RealBatch | None = None) -> tuple[nn.Module, dict]:
    """Train a copy of ``teacher`` on ``bank`` for ``settings.steps`` steps (AdamW, poly learning rate, each sample a
    random trajectory and one of its student steps, ``settings.real_fraction`` of them real patches from
    ``real_batch``); returns the student (in eval mode) and a record of the run.

    ``network_input(states, controls, tissue)`` assembles the network's input for a batch on ``device``."""
    real_count = settings.real_per_batch()
    if real_count and real_batch is None:
        raise ValueError("a real share of the distillation batches needs real_batch")
    student = copy.deepcopy(teacher).to(device)
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(settings.steps, 1), power=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rng = np.random.default_rng(settings.seed)
    progress = ProgressLog(logger, "distilling the 4-step student", total=settings.steps, unit="steps")
    losses, start = [], time.perf_counter()
    for _ in range(settings.steps):
        batch = student_batch(bank, rng, settings.batch_size, real_count, real_batch)
        states = torch.from_numpy(batch.states).to(device)
        targets = torch.from_numpy(batch.targets).to(device)
        t = torch.from_numpy(batch.timesteps).to(device)
        # where the lesion's shape is decided: the sphere and the lesion the sample ends on
        region = (batch.controls > 0) | (batch.finals > 0).any(axis=1)
        region = torch.from_numpy(region[:, None].astype(np.float32)).to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            prediction = student(network_input(states, batch.controls, batch.tissue), t)
        last_step = torch.from_numpy(batch.last_step).to(device)
        loss, _ = loss_fn((as_sampled(prediction.float(), last_step) - targets) ** 2, region)
        scaler.scale(loss).backward()
        clipped_step(scaler, optimizer, student.parameters(), settings.grad_clip)
        scaler.update()
        schedule.step()
        losses.append(float(loss.detach()))
        progress.update(len(losses), settings.steps)
    student.eval()
    window = max(1, min(20, len(losses)))
    record = {"steps": settings.steps, "trajectories": len(bank), "timesteps": list(bank.timesteps),
              "real_per_batch": real_count,
              "loss_first": float(np.mean(losses[:window])) if losses else None,
              "loss_last": float(np.mean(losses[-window:])) if losses else None,
              "seconds": round(time.perf_counter() - start, 1)}
    logger.info("distilled the student in %d steps: loss %.4g -> %.4g (means of %d steps)", settings.steps,
                record["loss_first"] or float("nan"), record["loss_last"] or float("nan"), window)
    return student, record
