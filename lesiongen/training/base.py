"""The trainer base: everything trainers share, so each trainer is only its data, loss and calibration.

A trainer owns one model (:mod:`lesiongen.models`) and trains its networks. The base owns the output folder (a
self-contained model folder: ``plans.json``, ``dataset.json``, ``fold_X/checkpoint_*.pt``), the fold's cases,
seeding, the training loop (AMP on CUDA, gradient clipping, EMA of the weights, DDP under torchrun), atomic
checkpoints with every RNG state so ``--c`` continues bit-for-bit, provenance, the text log, ``progress.png`` and
tqdm. A subclass sets ``name``, ``model_class`` and implements ``model_config``, ``load_training_data``,
``training_loss`` and, where it calibrates something after training, ``finish_training``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lesiongen.models import checkpoint as ckpt
from lesiongen.models.base import LesionModel
from lesiongen.models.folder import DATASET_JSON, PLANS_JSON, trainer_folder
from lesiongen.models.registry import model_config_from_state
from lesiongen.planning.plans import DEFAULT_SAMPLING
from lesiongen.preprocessing.dataset import PreprocessedDataset
from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits
from lesiongen.training.distributed import init_distributed
from lesiongen.training.progress import ThroughputMeter, describe_performance, plot_progress
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, json_plain, remove_partial_files, write_json
from lesiongen.utilities.locks import FolderLock
from lesiongen.utilities.provenance import code_version, json_sha256, model_record, sha256_file
from lesiongen.utilities.seeding import DEFAULT_SEED, derive_seed

logger = logging.getLogger("lesiongen.training")

LOG_FILE = "training_log.txt"
SUMMARY_FILE = "training_summary.json"
# progress.png is redrawn with checkpoint_latest.pt at most this often (drawing it costs a few tenths of a second,
# more than a short run's steps), and always at the end
PROGRESS_PLOT_SECONDS = 60.0


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


# sphere prior fields added after models were first shared; None (absent) leaves a plans' hash as it was
_LATER_PRIOR_FIELDS = ("observed_shapes", "neighbourhood", "lesion_tissue")


def plans_sha256(plans) -> str:
    record = dataclasses.asdict(plans)
    for stage in record["stages"].values():
        if stage.get("slice_axis") is None:  # a 3d stage hashes as before 2d stages existed: trained models stay valid
            stage.pop("slice_axis", None)
        if stage.get("sampling") in (None, DEFAULT_SAMPLING):  # the sampler models had before the plans chose it
            stage.pop("sampling", None)
    for prior in record["sphere_priors"].values():
        for later in _LATER_PRIOR_FIELDS:  # plans from before a field hash as they did
            if prior.get(later) is None:
                prior.pop(later, None)
    return json_sha256(record)


def parse_setting_value(text: str, current: Any, key: str) -> Any:
    """A ``--set`` value in the type of the setting it replaces (bool: true/false/1/0/yes/no; a name stays text)."""
    if isinstance(current, str):
        return str(text)
    if isinstance(current, bool):
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if str(text).lower() not in words:
            raise LesiongenError(f"--set {key}={text}: expected true or false")
        return words[str(text).lower()]
    try:
        value = float(text)
    except ValueError:
        raise LesiongenError(f"--set {key}={text}: expected a number") from None
    if isinstance(current, int):
        if not value.is_integer():
            raise LesiongenError(f"--set {key}={text}: expected a whole number")
        return int(value)
    return value


class Trainer:
    name: ClassVar[str] = "base"
    model_class: ClassVar[type[LesionModel]] = LesionModel
    learning_rate: ClassVar[float] = 1e-4
    weight_decay: ClassVar[float] = 1e-5
    ema_decay: ClassVar[float] = 0.999
    grad_clip: ClassVar[float] = 1.0
    # settings recorded only since some models were trained, with the value those models had where it differs from
    # today's default (a model without the setting is judged as trained with that value)
    settings_before_recorded: ClassVar[dict[str, Any]] = {}

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
        self.model: LesionModel | None = None
        self.networks: dict[str, nn.Module] = {}
        self.ema: dict[str, AveragedModel] = {}
        self.step = 0
        self.last_progress_plot = time.monotonic()  # of the last progress.png (a first one a minute in)
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
        self.extra: dict[str, Any] = {}  # JSON-able results of training (calibration details, validation scores)
        self.performance: dict[str, Any] = {}  # this run's training throughput and peak memory (ThroughputMeter)
        self.models_used: dict[str, dict] = {}  # other models this training depends on (sha256 etc.)
        self.runs: list[dict[str, Any]] = []  # which code trained which steps (one entry per start or --c)
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._seed_everything(self.options.seed)

    # ----------------------------------------------------------------------------------------------- layout
    @property
    def stage_plan(self):
        return self.plans.stages[self.model_class.stage]

    @property
    def folder_name(self) -> str:
        """The results folder's trainer part; a trainer with variants (e.g. seg strategies) names them here."""
        return self.name

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
        return self.stage_plan.patch_size

    def settings(self) -> dict[str, Any]:
        """Class-level settings (numbers and booleans) a user may change with ``--set NAME=VALUE``."""
        names = sorted(n for n in dir(type(self)) if not n.startswith("_")
                       and isinstance(getattr(type(self), n), (bool, int, float)))
        return {n: getattr(self, n) for n in names}

    def apply_settings(self, values: dict[str, Any]) -> None:
        known = self.settings()
        for key, value in values.items():
            if key not in known:
                raise LesiongenError(f"--set {key}: {self.name} has no such setting; it has {', '.join(known)}")
            setattr(self, key, parse_setting_value(value, known[key], key) if isinstance(value, str)
                    else type(known[key])(value))
        if values:  # the parsed values, as training will use them
            logger.info("settings changed: %s", {key: getattr(self, key) for key in values})

    # ------------------------------------------------------------------------------------ subclass hooks
    def model_config(self) -> Any:
        """The configuration of a freshly built model (what sampling uses until training calibrates it)."""
        return self.model_class.config_class()

    def initialise_networks(self) -> None:
        """Change the freshly built networks' initial weights (e.g. an output bias), before EMA copies them."""

    def load_training_data(self) -> None:
        """Load the fold's training data into memory."""

    def training_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Draw a batch with ``self.data_rng`` / ``self.generator`` and return (loss, parts to log)."""
        raise NotImplementedError

    def finish_training(self, model: LesionModel) -> None:
        """After the last step, with ``model`` running the EMA weights: calibrate ``model.config`` (it is the
        trained model's configuration) and put details into ``self.extra``."""

    def after_load(self) -> None:
        """After a checkpoint's state is loaded to resume."""

    # ------------------------------------------------------------------------------------------- seeding
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed)  # network initialisation: identical on every rank
        rank = self.distributed.rank
        self.data_rng = np.random.default_rng(derive_seed(seed, "data", rank))
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "torch", rank))

    # ------------------------------------------------------------------------------------------- set-up
    def initialize(self) -> None:
        self.model = self.model_class(self.plans, self.model_config(), self.device)
        self.networks = self.model.networks
        for network in self.networks.values():
            network.train()
        self.initialise_networks()
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

    def ema_model(self) -> LesionModel:
        """The model running the EMA weights: what sampling, validation and inference use."""
        return self.model.with_networks({k: v.module for k, v in self.ema.items()})

    def load_pretrained_weights(self, path: Path) -> None:
        """Initialise from another model's weights (e.g. trained on another dataset): every tensor of the same name
        and shape is loaded; the rest (other input channels or classes) keep their initialisation and are listed
        in one log line. The checkpoint is cited in the provenance (``models_used``)."""
        state = ckpt.load_checkpoint(path)
        weights = {k: ckpt.ema_weights(v) for k, v in state.get("ema", {}).items()} or state.get("networks", {})
        skipped_per_network = {}
        for name, network in self.networks.items():
            if name not in weights:
                raise LesiongenError(f"{path}: has no weights for network '{name}'")
            loaded, skipped = load_fitting_weights(network, weights[name])
            if not loaded:
                raise LesiongenError(f"{path}: no weights of '{name}' fit this plan (no tensor of the same name and "
                                     "shape)")
            self.ema[name].module.load_state_dict(network.state_dict())
            skipped_per_network[name] = skipped
            if skipped:
                logger.warning("pretrained weights %s: %d of %d tensors of '%s' skipped (not in the checkpoint or "
                               "of another shape), they keep their initialisation: %s", path, len(skipped),
                               len(loaded) + len(skipped), name, ", ".join(skipped))
        record = model_record(path, state.get("provenance"))
        self.models_used["pretrained_weights"] = record
        self.extra["pretrained_weights"] = {**record, "skipped": skipped_per_network}
        logger.info("initialised from pretrained weights %s", path)

    # --------------------------------------------------------------------------------------- provenance
    def provenance(self) -> dict[str, Any]:
        """What produced this checkpoint; models that load it carry it along, results that use it cite it."""
        return {
            **code_version(),
            "trainer": self.name, "variant": self.folder_name, "dataset": self.dataset.name, "fold": str(self.fold),
            "steps_trained": self.step, "total_steps": self.total_steps, "seed": self.options.seed,
            "batch_size": self.batch_size * self.distributed.world_size, "world_size": self.distributed.world_size,
            "plans_name": self.plans.plans_name, "plans_sha256": plans_sha256(self.plans),
            "settings": self.settings(), "train_cases": list(self.train_cases), "val_cases": list(self.val_cases),
            "models_used": self.models_used, "runs": self.runs,
        }

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """A checkpoint is continued only when it was made for what is asked now; else one line says why."""
        if state["trainer"] != self.name:
            raise LesiongenError(f"{path}: written by trainer '{state['trainer']}', not '{self.name}'")
        if state["world_size"] != self.distributed.world_size:
            raise LesiongenError(f"{path}: written by {state['world_size']} process(es); resume with the same "
                                 f"number (now {self.distributed.world_size})")
        provenance = state.get("provenance", {})
        if provenance.get("plans_sha256", plans_sha256(self.plans)) != plans_sha256(self.plans):
            raise LesiongenError(f"{path}: trained with other plans than {self.plans.plans_name} now holds; start "
                                 "afresh (without --c) or restore the plans it was trained with")
        if provenance.get("seed", self.options.seed) != self.options.seed:
            raise LesiongenError(f"{path}: trained with --seed {provenance['seed']}, not {self.options.seed}")
        if state["step"] > self.total_steps:
            raise LesiongenError(f"{path}: already trained {state['step']} steps, more than the {self.total_steps} "
                                 "requested; ask for at least as many steps or start afresh without --c")

    def stale_reason(self) -> str | None:
        """Why the finished model in the output folder is not what this trainer would make now (None: it is):
        missing, other step count, plans, seed or settings, or a model it used has changed since."""
        path = self.output_folder / ckpt.FINAL
        if not path.is_file():
            return "not trained yet"
        provenance = ckpt.load_checkpoint(path).get("provenance", {})
        if isinstance(provenance.get("settings"), dict):
            # a setting added since the model was trained (e.g. seg's loss) was its default then, unless the
            # trainer says what it was
            defaults = json_plain({k: self.settings_before_recorded.get(k, getattr(type(self), k, v))
                                   for k, v in self.settings().items()})
            provenance["settings"] = {**defaults, **provenance["settings"]}
        wanted = {"steps_trained": self.total_steps, "plans_sha256": plans_sha256(self.plans),
                  "seed": self.options.seed, "settings": json_plain(self.settings())}
        for key, value in wanted.items():
            recorded = provenance.get(key)
            if recorded == value:
                continue
            if isinstance(recorded, dict) and isinstance(value, dict):  # the settings: only those that differ
                return "; ".join(f"{key}: {name} is {recorded.get(name)!r}, {value.get(name)!r} asked"
                                 for name in sorted(recorded.keys() | value.keys())
                                 if recorded.get(name) != value.get(name))
            return f"{key} is {recorded!r}, {value!r} asked"
        # the models it would use now, where they are now: after a results folder was copied or moved, the
        # recorded paths may still lead to the old, unchanged files while the ones in use were retrained
        current = self.models_to_use()
        recorded = provenance.get("models_used", {})
        missing = sorted(current.keys() - recorded.keys())
        if missing:
            return f"it was trained without a {missing[0]}; {current[missing[0]]} is used now"
        for role, record in recorded.items():
            used = current.get(role, Path(record.get("checkpoint", "")))
            if not used.is_file() or sha256_file(used) != record.get("sha256"):
                return f"the {role} it used ({used}) has changed since"
        return None

    def models_to_use(self) -> dict[str, Path]:
        """role -> checkpoint of the other models this training would use now (none by default)."""
        return {}

    # --------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, final: bool) -> dict[str, Any]:
        rng = self.distributed.gather(rng_state(self.data_rng, self.generator))
        return {
            "format": ckpt.FORMAT_VERSION,
            "trainer": self.name,
            "fold": str(self.fold),
            "final": final,
            "step": self.step,
            "total_steps": self.total_steps,
            "world_size": self.distributed.world_size,
            "model": self.model.description(),
            "provenance": json_plain(self.provenance()),
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
            if not final and time.monotonic() - self.last_progress_plot >= PROGRESS_PLOT_SECONDS:
                plot_progress(self.history, self.output_folder / "progress.png")
                self.last_progress_plot = time.monotonic()
        self.distributed.barrier()

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        self._check_resumable(state, path)
        for k, net in self.networks.items():
            net.load_state_dict(state["networks"][k])  # the raw weights continue; the EMA stays an average
            self.ema[k].load_state_dict(state["ema"][k])
        self.model.config = model_config_from_state(state, path)[1]
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if state["total_steps"] != self.total_steps:
                self.stretch_schedule(self.optimizer, self.lr_scheduler, state["step"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][self.distributed.rank], self.data_rng, self.generator)
        self.step = state["step"]
        self.history = state["history"]
        self.extra = state["extra"]
        provenance = state.get("provenance", {})
        self.runs = list(provenance.get("runs", []))
        self.models_used = dict(provenance.get("models_used", {}))
        self.after_load()

    def stretch_schedule(self, optimizer: torch.optim.Optimizer, lr_scheduler, steps_done: int) -> None:
        """A run continued to another length: the poly schedule over the new length, from where it stands
        (PolynomialLR updates multiplicatively, so an LR that reached 0 would otherwise stay 0)."""
        total, done = max(self.total_steps, 1), min(steps_done, self.total_steps)
        lr_scheduler.total_iters = total
        for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs):
            group["lr"] = base * (1 - done / total) ** lr_scheduler.power

    def resume(self) -> str | None:
        """Continue from checkpoint_latest (or final). Returns None when there is none (training starts afresh),
        ``"finished"`` when the final checkpoint already has the requested steps, else ``"resumed"``."""
        for name in (ckpt.LATEST, ckpt.FINAL):
            path = self.output_folder / name
            if path.is_file():
                state = ckpt.load_checkpoint(path, self.device)
                self.load_state(state, path)
                if name == ckpt.FINAL and self.step == self.total_steps:
                    logger.info("%s is already trained to %d steps; nothing to do", path, self.step)
                    return "finished"
                logger.info("resuming from %s at step %d of %d", path, self.step, self.total_steps)
                return "resumed"
        logger.info("no checkpoint in %s; starting from scratch", self.output_folder)
        return None

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
        lock = FolderLock(self.output_folder, "training").acquire() if self.distributed.is_main else None
        handler = None
        try:
            handler = self._log_file_handler()
            if lock is not None:
                remove_partial_files(self.output_folder)  # leftovers of a killed run of this fold
            self._write_model_folder_files()
            self.initialize()
            logger.info("%s fold %s: %d training / %d validation cases, %d steps, batch %d x %d process(es), "
                        "device %s%s", self.name, self.fold, len(self.train_cases), len(self.val_cases),
                        self.total_steps, self.batch_size, self.distributed.world_size, self.device,
                        ", AMP" if self.amp else "")
            for name, net in self.networks.items():
                logger.info("network %s: %s, %.2f M parameters", name, type(net).__name__,
                            sum(p.numel() for p in net.parameters()) / 1e6)
            resumed = self.resume() if resume else None
            if resumed == "finished":
                return self.output_folder
            if pretrained_weights is not None and resumed is None:
                self.load_pretrained_weights(pretrained_weights)
            self.runs.append({**code_version(), "from_step": self.step, "to_step": self.total_steps,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.load_training_data()
            self._train_loop()
            inference_model = self.ema_model()
            for network in inference_model.networks.values():
                network.eval()
            self.finish_training(inference_model)
            self.save(final=True)
            if self.distributed.is_main:
                # as nnU-Net: the final checkpoint supersedes the latest one (and --c continues from it)
                (self.output_folder / ckpt.LATEST).unlink(missing_ok=True)
                plot_progress(self.history, self.output_folder / "progress.png")
                write_json(self.output_folder / SUMMARY_FILE, {
                    "trainer": self.name, "fold": str(self.fold), "steps": self.step,
                    "train_cases": self.train_cases, "val_cases": self.val_cases, "settings": self.settings(),
                    "final_loss": self.history["loss"][-1] if self.history["loss"] else None,
                    "performance": self.performance,
                    "model": self.model.description(), "provenance": json_plain(self.provenance()), **self.extra})
            logger.info("finished; %s", self.output_folder / ckpt.FINAL)
            return self.output_folder
        finally:
            if handler is not None:
                logging.getLogger("lesiongen").removeHandler(handler)
                handler.close()
            self.distributed.close()
            if lock is not None:
                lock.release()

    def _write_model_folder_files(self) -> None:
        """plans.json and dataset.json next to the folds: with them the folder is a self-contained model."""
        if not self.distributed.is_main:
            return
        folder = self.output_folder.parent
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / PLANS_JSON, dataclasses.asdict(self.plans))
        with atomic_path(folder / DATASET_JSON) as tmp:
            shutil.copyfile(self.dataset.folder / DATASET_JSON, tmp)

    def _train_loop(self) -> None:
        if not self.networks or self.step >= self.total_steps:
            return
        for net in self.networks.values():
            net.train()
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.name} fold {self.fold}",
                        unit="step", disable=not self.distributed.is_main, mininterval=2.0)
        window: list[float] = []
        meter = ThroughputMeter(self.device, self.total_steps - self.step,
                                self.batch_size * self.distributed.world_size)
        while self.step < self.total_steps:
            loss, parts = self._train_step()
            self.step += 1
            meter.step_done()
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
                with meter.untimed():
                    self.save(final=False)
        progress.close()
        self.performance = meter.summary()
        logger.info(describe_performance(self.performance))

    def _train_step(self) -> tuple[float, dict[str, float]]:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss, parts = self.training_loss()
        self.scaler.scale(loss).backward()
        clipped_step(self.scaler, self.optimizer, [p for n in self.networks.values() for p in n.parameters()],
                     self.grad_clip)
        self.scaler.update()
        self.lr_scheduler.step()
        for name, net in self.networks.items():
            self.ema[name].update_parameters(net)
        return float(loss.detach()), parts

    # ---------------------------------------------------------------------------------- helpers for subclasses
    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)


def clipped_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                 parameters: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
    """The optimiser step after ``scaler.scale(loss).backward()``: gradients unscaled, their norm clipped to
    ``grad_clip``, then stepped (skipped by the scaler on inf / NaN); ``scaler.update()`` is the caller's, once per
    iteration."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)


def load_fitting_weights(network: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``weights`` whose name and shape match one of ``network``'s state into it.

    Returns (loaded, skipped): the network's tensor names that were loaded and those that keep their values.
    """
    own = network.state_dict()
    fitting = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    network.load_state_dict({**own, **fitting})
    return sorted(fitting), sorted(set(own) - set(fitting))


def rng_state(numpy_rng: np.random.Generator, torch_generator: torch.Generator) -> dict[str, Any]:
    state = {"numpy": numpy_rng.bit_generator.state, "generator": torch_generator.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], numpy_rng: np.random.Generator, torch_generator: torch.Generator) -> None:
    numpy_rng.bit_generator.state = state["numpy"]
    torch_generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
