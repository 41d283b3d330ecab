"""What every model shares: plans, a typed configuration that round-trips through JSON, networks, a device.

A model is what inference loads; a trainer (``lesiongen.training``) owns one and trains its networks. A model is
built from the plans and its configuration alone, so building or loading one has no side effects: no file is
written, torch's global random generator is left as it was (network initialisation draws from a forked copy of it)
and no process group is started.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from lesiongen.planning.plans import Plans, StagePlan
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import json_plain
from lesiongen.utilities.provenance import model_record


class LesionModel:
    kind: ClassVar[str] = "base"  # the trainer that makes it, and the name in a checkpoint's ``model`` entry
    stage: ClassVar[str] = ""  # the plans stage whose patch size and networks it uses
    config_class: ClassVar[type]

    def __init__(self, plans: Plans, config: Any, device: torch.device | str = "cpu"):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.kind} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.plans = plans
        self.config = config
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda"
        self.provenance: dict[str, Any] = {}  # what trained it, from the checkpoint
        self.checkpoint: Path | None = None
        self.last_evaluations = 0  # network evaluations per sample of the last call, for reports
        # initial weights come from a fork of torch's RNG: whoever builds a model keeps their own random stream
        with torch.random.fork_rng(devices=[]):
            self.networks: dict[str, nn.Module] = {k: v.to(self.device) for k, v in self.build_networks().items()}

    # --------------------------------------------------------------------------------------------- layout
    @property
    def stage_plan(self) -> StagePlan:
        return self.plans.stages[self.stage]

    @property
    def patch_size(self) -> list[int]:
        return list(self.stage_plan.patch_size)

    @property
    def spacing(self) -> list[float]:
        return list(self.plans.target_spacing)

    def build_networks(self) -> dict[str, nn.Module]:
        """The model's networks by name, from the plans (empty for a model without one)."""
        return {}

    # ------------------------------------------------------------------------------------ state and twins
    def description(self) -> dict[str, Any]:
        """The checkpoint's ``model`` entry: what to build and how it samples, as plain JSON."""
        return {"kind": self.kind, "config": json_plain(dataclasses.asdict(self.config))}

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]], source: Any = None) -> None:
        for name, network in self.networks.items():
            if name not in weights:
                raise LesiongenError(f"{source}: has no weights for network '{name}' of {self.kind}")
            try:
                network.load_state_dict(weights[name])
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()
                raise LesiongenError(f"{source}: weights of '{name}' do not fit the {self.kind} network of its "
                                     f"plans ({first[1].strip() if len(first) > 1 else first[0]})") from None
            network.eval()

    def with_networks(self, networks: dict[str, nn.Module]) -> "LesionModel":
        """The same model (same plans and configuration object) running other copies of its networks, e.g. the
        EMA weights a trainer keeps."""
        twin = copy.copy(self)
        twin.networks = dict(networks)
        return twin

    def with_sampling(self, sampling: str) -> "LesionModel":
        """This model sampling with the named sampler (``model``: its own; the diffusion models know the presets
        of :data:`lesiongen.diffusion.schedules.SAMPLING_PRESETS`). A model without a sampler is itself."""
        return self

    def record(self) -> dict[str, Any]:
        """How results name this model: checkpoint path and sha256, trainer, steps, seed."""
        if self.checkpoint is None:
            return {"kind": self.kind, "checkpoint": None}
        return {"kind": self.kind, **model_record(self.checkpoint, self.provenance)}

    # ---------------------------------------------------------------------------------------- helpers
    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def autocast(self):
        return torch.autocast(self.device.type, enabled=self.amp)
