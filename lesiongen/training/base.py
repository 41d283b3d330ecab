"""The trainer base: everything trainers share, so each trainer is only its data, loss and sampler.

The base owns the output folder, the fold's cases and sphere priors, seeding, the training loop (AMP on CUDA,
gradient clipping, EMA of the weights, DDP under torchrun), atomic checkpoints with every RNG state so ``--c``
continues bit-for-bit, the text log, ``progress.png`` and tqdm. A subclass sets ``name`` and ``stage`` and
implements ``build_networks``, ``load_training_data``, ``training_loss`` and, for mask generators,
``sample_masks``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lesiongen.fingerprint.fingerprint import DatasetFingerprint
from lesiongen.paths import results_root
from lesiongen.planning.plans import SpherePrior, StagePlan
from lesiongen.planning.priors import fit_sphere_prior
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.training import checkpoint as ckpt
from lesiongen.training.distributed import init_distributed
from lesiongen.training.progress import plot_progress
from lesiongen.training.splits import fold_cases, load_or_create_splits
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import json_plain, write_json
from lesiongen.utilities.serialization import from_dict

logger = logging.getLogger("lesiongen.training")

DEFAULT_SEED = 12345
LOG_FILE = "training_log.txt"


@dataclasses.dataclass
class TrainingOptions:
    """What the command line controls; everything else comes from the plans."""

    total_steps: int | None = None  # None: the plans' epochs x iterations per epoch
    save_every: int | None = None  # None: once per planned epoch
    seed: int = DEFAULT_SEED
    batch_size: int | None = None  # None: the plans' batch size (summed over DDP processes)


def ema_average(decay: float):
    """EMA update with diffusers' warm-up, (1 + n) / (10 + n) capped at ``decay``, so short runs are not frozen."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return averaged * d + current.to(averaged.dtype) * (1 - d)

    return average


class Trainer:
    name: ClassVar[str] = "base"
    stage: ClassVar[str] = "mask_generation"
    learning_rate: ClassVar[float] = 1e-4
    weight_decay: ClassVar[float] = 1e-5
    ema_decay: ClassVar[float] = 0.999
    grad_clip: ClassVar[float] = 1.0

    def __init__(self, dataset: PreprocessedDataset, fold: int | str, device: torch.device | str = "cpu",
                 options: TrainingOptions | None = None):
        self.dataset = dataset
        self.plans = dataset.plans
        self.fold = fold
        self.options = options or TrainingOptions()
        self.distributed, self.device = init_distributed(torch.device(device))
        self.amp = self.device.type == "cuda"
        splits = load_or_create_splits(dataset.folder, dataset.case_ids()) if self.distributed.is_main else None
        self.distributed.barrier()  # the other ranks read what rank 0 wrote
        splits = splits or load_or_create_splits(dataset.folder, dataset.case_ids())
        self.train_cases, self.val_cases = fold_cases(splits, fold)
        self.priors = fold_sphere_priors(dataset.fingerprint, self.train_cases, self.plans)
        self.networks: dict[str, nn.Module] = {}
        self.ema: dict[str, AveragedModel] = {}
        self.step = 0
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
        self.extra: dict[str, Any] = {}  # JSON-able results of training, e.g. a calibrated threshold
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._seed_everything(self.options.seed)

    # ----------------------------------------------------------------------------------------------- layout
    @property
    def stage_plan(self) -> StagePlan:
        return self.plans.stages[self.stage]

    @property
    def output_folder(self) -> Path:
        return trainer_folder(self.dataset.name, self.folder_name, self.plans.plans_name) / f"fold_{self.fold}"

    @property
    def total_steps(self) -> int:
        return self.options.total_steps if self.options.total_steps is not None else self.stage_plan.total_steps

    @property
    def save_every(self) -> int:
        every = self.options.save_every or self.stage_plan.iterations_per_epoch
        return max(1, min(every, max(self.total_steps, 1)))

    @property
    def batch_size(self) -> int:
        """This process's share of the (global) batch, as nnU-Net splits it over DDP ranks."""
        total = self.options.batch_size or self.stage_plan.batch_size
        return max(1, math.ceil(total / self.distributed.world_size))

    @property
    def spacing(self) -> list[float]:
        return self.plans.target_spacing

    @property
    def patch_size(self) -> list[int]:
        return self.plans.lesion_patch_size

    def settings(self) -> dict[str, float]:
        """Numeric class-level settings a user may change with ``--set NAME=VALUE``."""
        names = sorted(n for n in dir(type(self)) if not n.startswith("_")
                       and isinstance(getattr(type(self), n), (int, float)) and not isinstance(getattr(type(self), n), bool))
        return {n: getattr(self, n) for n in names}

    def apply_settings(self, values: dict[str, float]) -> None:
        known = self.settings()
        for key, value in values.items():
            if key not in known:
                raise LesiongenError(f"--set {key}: {self.name} has no such setting; it has {', '.join(known)}")
            setattr(self, key, type(known[key])(value))
        if values:
            logger.info("settings changed: %s", values)

    # ------------------------------------------------------------------------------------ subclass hooks
    def build_networks(self) -> dict[str, nn.Module]:
        """The trained networks by name (empty for a trainer without one)."""
        return {}

    def load_training_data(self) -> None:
        """Load the fold's training data into memory."""

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Draw a batch with ``self.data_rng`` / ``self.generator`` and return (loss, parts to log)."""
        raise NotImplementedError

    def finish_training(self) -> None:
        """After the last step, with the EMA weights loaded: calibrations etc. go into ``self.extra``."""

    def after_load(self) -> None:
        """After a checkpoint's state is loaded (to resume or to predict): adopt what it records in ``self.extra``."""

    # ------------------------------------------------------------------------------------------- seeding
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed)  # network initialisation: identical on every rank
        rank = self.distributed.rank
        self.data_rng = np.random.default_rng([seed, rank])
        self.generator = torch.Generator().manual_seed(seed * 1009 + rank)

    # ------------------------------------------------------------------------------------------- set-up
    def initialize(self) -> None:
        self.networks = {k: v.to(self.device) for k, v in self.build_networks().items()}
        self.ema = {k: AveragedModel(v, avg_fn=ema_average(self.ema_decay), use_buffers=True)
                    for k, v in self.networks.items()}
        parameters = [p for net in self.networks.values() for p in net.parameters()]
        if parameters:
            self.optimizer = self.configure_optimizer(parameters)
            self.lr_scheduler = torch.optim.lr_scheduler.PolynomialLR(
                self.optimizer, total_iters=max(self.total_steps, 1), power=0.9)
        self.trained = {k: DistributedDataParallel(v) if self.distributed.enabled else v
                        for k, v in self.networks.items()}

    def configure_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW by default (diffusion and mask models); the poly LR schedule is the base's."""
        return torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)

    @property
    def folder_name(self) -> str:
        """The results folder's trainer part; a trainer with variants (e.g. seg strategies) names them here."""
        return self.name

    def load_pretrained_weights(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        for name, network in self.networks.items():
            if name not in state["networks"]:
                raise LesiongenError(f"{path}: has no weights for network '{name}'")
            own = network.state_dict()
            given = state["networks"][name]
            mismatched = [k for k in own if k in given and given[k].shape != own[k].shape]
            if mismatched:
                raise LesiongenError(f"{path}: weights for '{name}' do not fit this plan ({mismatched[0]} differs)")
            own.update({k: v for k, v in given.items() if k in own})
            network.load_state_dict(own)
            self.ema[name].module.load_state_dict(own)
        logger.info("initialised from pretrained weights %s", path)

    # --------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, final: bool) -> dict[str, Any]:
        rng = self.distributed.gather(ckpt.rng_state(self.data_rng, self.generator))
        return {
            "format": ckpt.FORMAT_VERSION,
            "trainer": self.name,
            "fold": str(self.fold),
            "final": final,
            "step": self.step,
            "total_steps": self.total_steps,
            "world_size": self.distributed.world_size,
            "networks": {k: v.state_dict() for k, v in self.networks.items()},
            "ema": {k: v.state_dict() for k, v in self.ema.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else {},
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": json_plain(self.history),
            "extra": json_plain(self.extra),
        }

    def save(self, final: bool = False) -> None:
        state = self.state_dict(final)  # every rank joins the RNG gather
        if self.distributed.is_main:
            self.output_folder.mkdir(parents=True, exist_ok=True)
            ckpt.save_checkpoint(state, self.output_folder / (ckpt.FINAL if final else ckpt.LATEST))
            if not final:
                plot_progress(self.history, self.output_folder / "progress.png")
        self.distributed.barrier()

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        if state["trainer"] != self.name:
            raise LesiongenError(f"{path}: written by trainer '{state['trainer']}', not '{self.name}'")
        if state["world_size"] != self.distributed.world_size:
            raise LesiongenError(f"{path}: written by {state['world_size']} process(es); resume with the same "
                                 f"number (now {self.distributed.world_size})")
        for k, net in self.networks.items():
            net.load_state_dict(state["networks"][k])
            self.ema[k].load_state_dict(state["ema"][k])
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if state["total_steps"] != self.total_steps:
                # a run continued to another length: the poly schedule over the new length, from where it stands
                # (PolynomialLR updates multiplicatively, so an LR that reached 0 would otherwise stay 0)
                total, done = max(self.total_steps, 1), min(state["step"], self.total_steps)
                self.lr_scheduler.total_iters = total
                for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs):
                    group["lr"] = base * (1 - done / total) ** self.lr_scheduler.power
        self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng_state(state["rng"][self.distributed.rank], self.data_rng, self.generator)
        self.step = state["step"]
        self.history = state["history"]
        self.extra = state["extra"]
        self.after_load()

    def resume(self) -> bool:
        """Continue from checkpoint_latest (or final); False when there is none, so training starts afresh."""
        for name in (ckpt.LATEST, ckpt.FINAL):
            path = self.output_folder / name
            if path.is_file():
                state = ckpt.load_checkpoint(path, self.device)
                # a final checkpoint of a shorter run can be continued to more steps
                self.load_state(state, path)
                logger.info("resuming from %s at step %d of %d", path, self.step, self.total_steps)
                return True
        logger.info("no checkpoint in %s; starting from scratch", self.output_folder)
        return False

    def load_for_inference(self, path: Path | None = None) -> None:
        """Build the networks and load the final EMA weights (and calibration) for sampling."""
        path = path or self.output_folder / ckpt.FINAL
        state = ckpt.load_checkpoint(path, self.device)
        if state["trainer"] != self.name:
            raise LesiongenError(f"{path}: written by trainer '{state['trainer']}', not '{self.name}'")
        self.networks = {k: v.to(self.device) for k, v in self.build_networks().items()}
        for k, net in self.networks.items():
            net.load_state_dict(ckpt.ema_weights(state["ema"][k]))
            net.eval()
        self.extra = state["extra"]
        self.step = state["step"]
        self.after_load()

    # ------------------------------------------------------------------------------------------ training
    def _log_file_handler(self) -> logging.Handler | None:
        if not self.distributed.is_main:
            return None
        self.output_folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.output_folder / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("lesiongen").addHandler(handler)
        return handler

    def run_training(self, resume: bool = False, pretrained_weights: Path | None = None) -> Path:
        """Train (or continue) to ``total_steps``, write checkpoint_final.pt; returns the fold folder."""
        handler = self._log_file_handler()
        try:
            self._write_run_files()
            self.initialize()
            logger.info("%s fold %s: %d training / %d validation cases, %d steps, batch %d x %d process(es), "
                        "device %s%s", self.name, self.fold, len(self.train_cases), len(self.val_cases),
                        self.total_steps, self.batch_size, self.distributed.world_size, self.device,
                        ", AMP" if self.amp else "")
            for name, net in self.networks.items():
                logger.info("network %s: %s, %.2f M parameters", name, type(net).__name__,
                            sum(p.numel() for p in net.parameters()) / 1e6)
            resumed = resume and self.resume()
            if pretrained_weights is not None and not resumed:
                self.load_pretrained_weights(pretrained_weights)
            self.load_training_data()
            self._train_loop()
            for k, net in self.networks.items():  # the EMA weights are the result
                net.load_state_dict(ckpt.ema_weights(self.ema[k].state_dict()))
                net.eval()
            self.finish_training()
            self.save(final=True)
            if self.distributed.is_main:
                # as nnU-Net: the final checkpoint supersedes the latest one (and --c continues from it)
                (self.output_folder / ckpt.LATEST).unlink(missing_ok=True)
                plot_progress(self.history, self.output_folder / "progress.png")
                write_json(self.output_folder / "training_summary.json", {
                    "trainer": self.name, "fold": str(self.fold), "steps": self.step,
                    "train_cases": self.train_cases, "val_cases": self.val_cases, "settings": self.settings(),
                    "final_loss": self.history["loss"][-1] if self.history["loss"] else None, **self.extra})
            logger.info("finished; %s", self.output_folder / ckpt.FINAL)
            return self.output_folder
        finally:
            if handler is not None:
                logging.getLogger("lesiongen").removeHandler(handler)
                handler.close()
            self.distributed.close()

    def _write_run_files(self) -> None:
        if not self.distributed.is_main:
            return
        folder = self.output_folder.parent
        folder.mkdir(parents=True, exist_ok=True)
        # like nnU-Net: the plans a model was trained with travel with it
        write_json(folder / "plans.json", dataclasses.asdict(self.plans))
        write_json(self.output_folder / "sphere_priors.json", {k: dataclasses.asdict(v) for k, v in self.priors.items()})

    def _train_loop(self) -> None:
        if not self.networks or self.step >= self.total_steps:
            return
        for net in self.networks.values():
            net.train()
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.name} fold {self.fold}",
                        unit="step", disable=not self.distributed.is_main, mininterval=2.0)
        window: list[float] = []
        while self.step < self.total_steps:
            loss, parts = self._train_step()
            self.step += 1
            window.append(loss)
            self.history["step"].append(self.step)
            self.history["loss"].append(loss)
            self.history["lr"].append(self.optimizer.param_groups[0]["lr"])
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.step % self.save_every == 0 or self.step == self.total_steps:
                details = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                logger.info("step %d/%d: loss %.4f (mean of last %d) %s lr %.2e", self.step, self.total_steps,
                            float(np.mean(window)), len(window), details, self.history["lr"][-1])
                window = []
                self.save(final=False)
        progress.close()

    def _train_step(self) -> tuple[float, dict[str, float]]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss, parts = self.training_loss()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for n in self.networks.values() for p in n.parameters()], self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        for name, net in self.networks.items():
            self.ema[name].update_parameters(net)
        return float(loss.detach()), parts

    # ---------------------------------------------------------------------------------- helpers for subclasses
    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)


def trainer_folder(dataset_name: str, trainer_name: str, plans_name: str) -> Path:
    return results_root() / dataset_name / f"{trainer_name}__{plans_name}"


def fold_sphere_priors(fingerprint: DatasetFingerprint, train_cases: list[str], plans) -> dict[str, SpherePrior]:
    """Sphere priors refitted on the fold's training cases only, so validation lesions never shape a generator."""
    subset = dataclasses.replace(fingerprint, cases=[c for c in fingerprint.cases if c.case_id in set(train_cases)])
    patch_mm = np.asarray(plans.lesion_patch_size) * np.asarray(plans.target_spacing)
    priors = {}
    for key, planned in plans.sphere_priors.items():
        fitted = fit_sphere_prior(subset, int(key), patch_mm, min(plans.target_spacing))
        # a class absent from this fold keeps the dataset-wide prior rather than an empty one
        priors[key] = fitted if fitted.n_lesions_observed else planned
    return priors


def priors_from_json(data: dict[str, dict]) -> dict[str, SpherePrior]:
    return {k: from_dict(SpherePrior, v) for k, v in data.items()}
