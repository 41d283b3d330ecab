"""Typed plans (``lesiongen_plans.json``): every decision the planner makes, readable by every later stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesiongen.io.dataset import lesion_values
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.serialization import load_dataclass, save_dataclass

PLANS_NAME = "lesiongenPlans"  # the default plans identifier; others (e.g. lesiongenPlansCPU) sit next to it
LEGACY_PLANS_FILE = "lesiongen_plans.json"  # the default plans' file name before plans identifiers (0.1)


def plans_file_name(identifier: str) -> str:
    """``{identifier}.json``, as nnU-Net names plans files (``lesiongenPlans.json``, ``lesiongenPlansCPU.json``)."""
    return f"{identifier}.json"


def plans_path(folder: Path, identifier: str = PLANS_NAME) -> Path:
    """The plans file of ``identifier`` in a preprocessed dataset folder (the 0.1 name for the default plans when
    only that exists)."""
    path = folder / plans_file_name(identifier)
    legacy = folder / LEGACY_PLANS_FILE
    return legacy if identifier == PLANS_NAME and not path.is_file() and legacy.is_file() else path

# segmentation configurations, as nnU-Net's ``-c``: each is a plans stage; 2d exists for anisotropic data only
SEG_3D = "3d"
SEG_2D = "2d"
SEGMENTATION_STAGES = {SEG_3D: "segmentation", SEG_2D: "segmentation_2d"}


def segmentation_stage_name(configuration: str, plans: "Plans | None" = None) -> str:
    """The plans stage of a segmentation configuration; with ``plans``, one line saying why they lack it."""
    if configuration not in SEGMENTATION_STAGES:
        raise LesiongenError(f"unknown segmentation configuration '{configuration}'; choose one of "
                             f"{', '.join(SEGMENTATION_STAGES)}")
    stage = SEGMENTATION_STAGES[configuration]
    if plans is not None and stage not in plans.stages:
        why = " (the planner proposes 2d for strongly anisotropic data only)" if configuration == SEG_2D else ""
        raise LesiongenError(f"plans {plans.plans_name} of {plans.dataset_name} have no {configuration} "
                             f"segmentation configuration{why}")
    return stage


# the samplers a diffusion model can be switched to at inference (``--sampling``); a diffusion stage of the plans
# names the one newly trained models use by default (``StagePlan.sampling``)
MODEL_SAMPLING = "model"  # the sampler the model's configuration holds
DEFAULT_SAMPLING = "default"  # inpainter: 16 DDIM steps + 3 resampling jumps + guidance; diffmask: DPM-Solver++ 20
FEW_STEP_SAMPLING = "few_step"  # a few deterministic DDIM steps, no jumps, no guidance (diffusion/presets.py)
SAMPLING_PRESETS = (DEFAULT_SAMPLING, FEW_STEP_SAMPLING)
# diffmask's distilled 4-step student, of models trained with one: asked for by name when evaluating masks; at
# inference ``few_step`` runs it when the choice after training took it
DISTILLED_SAMPLING = "distilled"


# normalisation schemes, picked from channel names as in nnU-Net
ZSCORE = "zscore"
CT = "ct"
NO_NORM = "none"
RESCALE_0_1 = "rescale_0_1"


@dataclass
class ChannelNormalization:
    channel: int
    name: str
    scheme: str
    use_brain_mask: bool  # statistics from, and values set only inside, the brain / nonzero region
    # CT only: dataset-wide clip range and statistics from the fingerprint
    clip_lower: float | None = None
    clip_upper: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class NetworkPlan:
    """A network class and the JSON-able keyword arguments to build it."""

    architecture: str
    kwargs: dict[str, Any]


@dataclass
class StagePlan:
    # voxels at the plans' target spacing: (z, y, x) for a 3D stage; for a 2D stage the in-plane axes, i.e. the
    # volume's axes without ``slice_axis``, in volume order
    patch_size: list[int]
    batch_size: int
    networks: dict[str, NetworkPlan]
    num_epochs: int
    iterations_per_epoch: int
    estimated_memory_gb: float
    slice_axis: int | None = None  # a 2D stage: the volume axis its networks slice along (None: a 3D stage)
    # a diffusion stage: the sampling preset of newly trained models (their ``--sampling model``), one of
    # SAMPLING_PRESETS; None: a stage without a diffusion model, or plans from before the field (the default)
    sampling: str | None = None

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.iterations_per_epoch

    def planned_sampling(self, where: str) -> str:
        """The stage's sampling preset (``DEFAULT_SAMPLING`` when the plans predate the field); ``where`` names the
        plans and stage in the one-line error for a value that is not a preset."""
        if self.sampling is None:
            return DEFAULT_SAMPLING
        if self.sampling not in SAMPLING_PRESETS:
            raise LesiongenError(f"{where}: sampling '{self.sampling}' is not one of {', '.join(SAMPLING_PRESETS)}")
        return self.sampling


@dataclass
class Categorical:
    """A discrete distribution: value (as string key) -> probability."""

    probabilities: dict[str, float]


@dataclass
class LogNormal:
    """log(x) ~ N(mu, sigma), truncated to [minimum, maximum]; quantiles of the data kept for reference."""

    mu: float
    sigma: float
    minimum: float
    maximum: float
    quantiles: dict[str, float]


@dataclass
class Beta:
    alpha: float
    beta: float


@dataclass
class ShapeBank:
    """The observed lesions' shapes, entry by entry, for a smoothed bootstrap: a draw takes one observed lesion's
    bounding radius, volume and axis ratios together and jitters its size by a log-normal kernel of
    ``log_bandwidth``. Unlike a fitted log-normal it keeps a distribution's several peaks and the link between size
    and shape."""

    radius_mm: list[float]
    volume_mm3: list[float]  # the same lesion's volume (its voxels' cells)
    axis_ratio_middle: list[float]  # second / first semi-axis of the same lesion
    axis_ratio_minor: list[float]  # third / second
    log_bandwidth: float  # s.d. of the log-radius jitter (Silverman's rule on the observed log radii)


@dataclass
class NeighbourhoodBank:
    """The tissue each observed lesion borders, entry by entry, so that new lesions are placed where real ones sit
    (next to the ventricles, at the cortex) and not only on the tissue class under them.

    Per lesion, the share of each of ``tissue_classes`` among the brain voxels within ``shell_mm`` of it (the
    fingerprint's shell). A candidate centre is scored by the kernel density (Gaussian, ``bandwidth`` in share units)
    of these shares at the shares of the shell a lesion of ``inner_radius_mm`` (the class's median equivalent-sphere
    radius) centred there would have."""

    tissue_classes: list[int]
    shares: list[list[float]]  # per observed lesion, one share per tissue class, in tissue_classes order
    inner_radius_mm: float
    shell_mm: float
    bandwidth: float


@dataclass
class SpherePrior:
    """What a lesion of one class looks like, as sampling distributions for the mask generators."""

    label: int
    n_lesions_observed: int
    lesions_per_case: Categorical
    lesions_per_patch: Categorical  # lesion centroids inside a lesion-centred patch, counting the centre one
    radius_mm: LogNormal  # bounding-sphere radius
    volume_mm3: LogNormal
    axis_ratio_middle: Beta  # second / first ellipsoid semi-axis
    axis_ratio_minor: Beta  # third / second semi-axis
    tissue_probability: Categorical  # tissue class under the lesion ("0" when no tissue maps)
    location_bins: int
    location_histogram: list[float]  # bins**3 probabilities of the centroid in the brain box, (z, y, x) C order
    min_lesion_voxels: int
    min_lesion_volume_mm3: float
    # None in plans and models written before the bank: their samplers draw from the fitted distributions above
    observed_shapes: ShapeBank | None = None
    # None without tissue maps, and in plans and models written before it: placement then ignores the neighbourhood
    neighbourhood: NeighbourhoodBank | None = None
    # share of each tissue class (str(value)) among all the class's lesion voxels; None without tissue maps, and in
    # plans and models written before it: inserted masks then cover any brain tissue
    lesion_tissue: dict[str, float] | None = None


@dataclass
class Plans:
    dataset_name: str
    plans_name: str
    lesiongen_version: str
    fingerprint_signature: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    tissue_labels: dict[str, int]
    has_tissue_maps: bool
    image_reader: str | None
    original_median_spacing: list[float]  # (z, y, x) mm
    original_median_shape: list[int]  # after cropping
    target_spacing: list[float]
    anisotropic: bool
    median_shape_at_target_spacing: list[int]
    normalization: list[ChannelNormalization]
    gpu_memory_target_gb: float
    lesion_patch_size: list[int]
    lesion_patch_margin_mm: float
    lesion_fraction_fitting: float  # share of lesions whose bounding sphere plus margin fits the lesion patch
    stages: dict[str, StagePlan]
    sphere_priors: dict[str, SpherePrior]
    notes: list[str] = field(default_factory=list)  # why the planner did what it did, in words
    # the preprocessed data these plans use (a folder of the preprocessed dataset); plans that differ only in their
    # networks or schedules (a CPU preset) share the default plans' data. Empty: the plans' own name.
    data_identifier: str = ""

    @property
    def data_folder_name(self) -> str:
        return self.data_identifier or self.plans_name

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def lesion_labels(self) -> list[int]:
        return lesion_values(self.labels)


def save_plans(plans: Plans, path: Path) -> None:
    save_dataclass(path, plans)


def load_plans(path: Path) -> Plans:
    return load_dataclass(Plans, path)
