"""``lesiongen_predict``'s work: scans in a folder -> lesions put in (synth), segmented (seg) or removed (remove).

Input folders use the raw layout's channel naming (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...; any supported
format). Every output keeps its input's exact geometry and file format, is written atomically, and never replaces
an input file; with ``resume`` a case whose outputs all exist is skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesiongen.io.images import SUPPORTED_ENDINGS, ImageGeometry, file_ending, read_geometry, read_image, write_image
from lesiongen.planning.plans import MODEL_SAMPLING, SAMPLING_PRESETS, segmentation_stage_name
from lesiongen.utilities.dtypes import cast_to
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import remove_partial_files

logger = logging.getLogger(__name__)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# How far an input may lie from the training data before prediction refuses it (check_plausible). Resampling
# to the plans' spacing makes any scan the network's size, so nothing else would stop an 8 mm, 73 cm scan from
# becoming a 364x428x348 volume of nonsense. Spacings within 4x of the median cover 0.5 mm research scans against
# 1 mm training data and 4-5 mm clinical slices against 1 mm; an extent within 3x covers full-head scans and neck
# coverage against the brain-cropped median extent, but not a whole-body field of view.
MAX_SPACING_FACTOR = 4.0  # per axis: input spacing / median training spacing, either way
MAX_EXTENT_FACTOR = 3.0  # per axis: input extent (mm) / median training extent (mm), either way
_AXES = ("z", "y", "x")


@dataclass
class InputCase:
    case_id: str
    images: list[Path]
    ending: str
    label: Path | None = None  # remove mode: the lesions to remove
    brain_mask: Path | None = None
    tissue: Path | None = None


MODES = ("synth", "seg", "remove", "brainmask")


@dataclass
class PredictOptions:
    mode: str  # synth | seg | remove | brainmask (seg with a brain-extraction model, cleaned to one piece)
    resume: bool = False
    seed: int = 0
    num_parts: int = 1  # split the cases into this many parts (cluster array jobs, several GPUs) ...
    part_id: int = 0  # ... and predict this one
    # synth
    masks: str = "diffmask"  # mask generator
    n_variants: int = 1
    n_lesions: int | None = None
    volume_range_mm3: tuple[float, float] | None = None
    tissue_classes: list[int] | None = None
    preview: bool = False
    # seg
    synthetic: str = "none"  # the seg models trained with this synthetic strategy
    configuration: str | None = None  # seg: 3d or 2d; None: 3d, or with a model folder given, the folder's own
    save_probabilities: bool = False
    mirror: bool = True
    # the model folder's postprocessing.json (lesiongen_determine_postprocessing), when it has a valid one
    postprocess: bool = True
    # all modes: predict scans far from the training data (spacing, extent; see check_plausible) with a warning
    force: bool = False
    # synth / remove: the inpainter's and diffmask's sampler, "model" (each model's own) or a sampling preset
    # ("default", "few_step"; see lesiongen.diffusion.schedules.SAMPLING_PRESETS)
    sampling: str = "model"
    # synth / remove / seg: a brain-extraction seg model folder; scans without a given brain mask get its mask
    brain_model: Path | None = None
    # synth / remove: scans read at once whose lesions share the inpainter's batches (for a GPU's throughput; each
    # scan's result is the one it gets alone, and the scans are held in memory together)
    batch_scans: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LesiongenError(f"unknown mode '{self.mode}'; choose one of {', '.join(MODES)}")
        if self.configuration is not None:
            segmentation_stage_name(self.configuration)  # a known configuration, or one line naming them
        if self.sampling not in (MODEL_SAMPLING, *SAMPLING_PRESETS):
            raise LesiongenError(f"unknown sampling '{self.sampling}'; choose {MODEL_SAMPLING}, "
                                 f"{', '.join(SAMPLING_PRESETS)}")
        if self.brain_model is not None and self.mode == "brainmask":
            raise LesiongenError("--brain_model is for synth, remove and seg; -m brainmask takes the brain-extraction "
                                 "model as its model (-model or -d)")
        if self.batch_scans < 1:
            raise LesiongenError(f"--batch_scans must be at least 1, got {self.batch_scans}")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise LesiongenError(f"--part_id must be 0-{self.num_parts - 1} for --num_parts {self.num_parts}, "
                                 f"got {self.part_id}")


def this_part(cases: list[InputCase], options: PredictOptions) -> list[InputCase]:
    """The cases of part ``part_id`` of ``num_parts`` (every num_parts-th case, as nnU-Net splits them)."""
    return cases[options.part_id::options.num_parts]


def find_input_cases(folder: Path, channel_names: dict[str, str], labels: Path | None = None,
                     brain_masks: Path | None = None, tissue: Path | None = None,
                     described_by: Path | None = None) -> list[InputCase]:
    """Group ``folder``'s files into cases; every problem is one line naming the file (all reported at once).

    Every case must have exactly the channels of ``channel_names`` (the model's dataset.json, ``described_by``).
    """
    n_channels = len(channel_names)
    wanted = ", ".join(f"{int(k):04d} {v}" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
    source = f" ({described_by})" if described_by else ""
    if not folder.is_dir():
        raise LesiongenError(f"{folder}: input folder does not exist")
    cases: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        ending = file_ending(path)
        if ending not in SUPPORTED_ENDINGS:
            problems.append(f"{path}: not an image file ({', '.join(SUPPORTED_ENDINGS)} expected)")
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if not match:
            problems.append(f"{path}: name is not CASE_XXXX{ending} (a 4-digit channel number)")
            continue
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
        endings[match["case"]] = ending
    result = []
    for case_id, channels in sorted(cases.items()):
        expected = set(range(n_channels))
        if set(channels) != expected:
            missing = sorted(expected - set(channels))
            extra = sorted(set(channels) - expected)
            what = f"missing channel(s) {missing}" if missing else f"unexpected channel(s) {extra}"
            problems.append(f"{folder / case_id}: {what}; the model{source} takes {n_channels} channel(s): {wanted}")
            continue
        ending = endings[case_id]
        item = InputCase(case_id, [channels[c] for c in range(n_channels)], ending)
        for attribute, source in (("label", labels), ("brain_mask", brain_masks), ("tissue", tissue)):
            if source is not None:
                path = source / f"{case_id}{ending}"
                if not path.is_file():
                    problems.append(f"{path}: missing ({attribute.replace('_', ' ')} of case {case_id})")
                setattr(item, attribute, path)
        result.append(item)
    if problems:
        raise LesiongenError("\n".join(problems))
    if not result:
        raise LesiongenError(f"{folder}: no input scans (expected CASE_0000{'.nii.gz'} ... files)")
    return result


def read_map(path: Path | None, geometry: ImageGeometry, what: str, reader: str | None = None) -> np.ndarray | None:
    """A per-case map (label, brain mask, tissue) that must lie on its scan's grid; None when not given."""
    if path is None:
        return None
    array, geo = read_image(path, reader)
    mismatch = geo.matches(geometry)
    if mismatch:
        raise LesiongenError(f"{path}: {what} does not match its scan ({mismatch})")
    return array


def output_files(case: InputCase, options: PredictOptions, out: Path, n_channels: int) -> list[Path]:
    """Every file a case produces; the last one is written last and marks the case as done."""
    e = case.ending
    if options.mode == "brainmask":
        return [out / f"{case.case_id}{e}"]
    if options.mode == "seg":
        files = [out / f"{case.case_id}.npz", out / f"{case.case_id}.json"] if options.save_probabilities else []
        return files + [out / f"{case.case_id}{e}"]
    if options.mode == "remove":
        return [out / f"{case.case_id}_{c:04d}{e}" for c in range(n_channels)]
    files = []
    for k in range(options.n_variants):
        name = f"{case.case_id}_syn{k}"
        files += [out / f"{name}_{c:04d}{e}" for c in range(n_channels)] + [out / "labels" / f"{name}{e}"]
    return files


def check_output_folder(out: Path, input_folders: list[Path]) -> None:
    """The output folder must be none of the input folders, nor inside one, nor contain one (symlinks resolved):
    outputs would land among the inputs and be read as inputs on the next run."""
    target = out.resolve()
    for folder in input_folders:
        source = folder.resolve()
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else "is inside" if source in target.parents else "contains"
            raise LesiongenError(f"{out}: output folder {relation} the input folder {folder}; choose another -o")


def check_not_overwriting_inputs(cases: list[InputCase], out: Path, options: PredictOptions, n_channels: int) -> None:
    inputs = {p.resolve() for c in cases for p in [*c.images, c.label, c.brain_mask, c.tissue] if p is not None}
    for case in cases:
        for path in output_files(case, options, out, n_channels):
            if path.resolve() in inputs:
                raise LesiongenError(f"{path}: would overwrite an input file; choose another output folder")


def _far(ratios: np.ndarray, factor: float) -> list[int]:
    """Axes whose ratio to the median lies beyond ``factor`` either way."""
    return [a for a, r in enumerate(ratios) if not 1 / factor <= r <= factor]


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def check_plausible(geometry: ImageGeometry, plans, path: Path, force: bool = False) -> None:
    """Refuse a scan whose spacing or physical extent is far from the training data's median (see the thresholds
    above); with ``force`` a warning instead. ``plans`` needs ``original_median_spacing`` and
    ``original_median_shape`` (array order, the brain-cropped training scans)."""
    median_spacing = np.asarray(getattr(plans, "original_median_spacing", None) or [], dtype=float)
    median_shape = np.asarray(getattr(plans, "original_median_shape", None) or [], dtype=float)
    if median_spacing.shape != (3,) or median_shape.shape != (3,) or not np.all(median_spacing * median_shape > 0):
        return  # plans without the training medians: nothing to compare with
    spacing = np.asarray(geometry.spacing_zyx, dtype=float)
    extent = spacing * np.asarray(geometry.shape, dtype=float)
    median_extent = median_spacing * median_shape
    spacing_ratio, extent_ratio = spacing / median_spacing, extent / median_extent
    reasons = [f"spacing {spacing_ratio[a]:.2g}x the median on axis {_AXES[a]}"
               for a in _far(spacing_ratio, MAX_SPACING_FACTOR)]
    reasons += [f"extent {extent_ratio[a]:.2g}x the median on axis {_AXES[a]}"
                for a in _far(extent_ratio, MAX_EXTENT_FACTOR)]
    if not reasons:
        return
    message = (f"{path}: spacing {_mm(spacing)} mm / extent {_mm(extent)} mm is far from what the model was trained "
               f"on (median spacing {_mm(median_spacing)} mm / extent {_mm(median_extent)} mm; {', '.join(reasons)})")
    if not force:
        raise LesiongenError(f"{message}; use --force to predict anyway")
    logger.warning("%s; predicting anyway (--force)", message)


def _is_done(case: InputCase, options: PredictOptions, out: Path, n_channels: int) -> bool:
    return options.resume and all(p.is_file() for p in output_files(case, options, out, n_channels))


def check_cases_plausible(cases: list[InputCase], plans, force: bool) -> None:
    """:func:`check_plausible` on every case's first channel (headers only), before any case is worked on."""
    for case in cases:
        check_plausible(read_geometry(case.images[0]), plans, case.images[0], force)


@dataclass
class LoadedCase:
    """A case read for prediction: its channels (c, z, y, x) float32, their geometry and file dtypes, and its maps."""

    case: InputCase
    images: np.ndarray
    geometry: ImageGeometry
    dtypes: list[np.dtype]
    label: np.ndarray | None = None  # uint8
    brain: np.ndarray | None = None  # bool
    tissue: np.ndarray | None = None  # uint8

    @property
    def spacing(self) -> list[float]:
        return list(self.geometry.spacing_zyx)


def load_case(case: InputCase) -> LoadedCase:
    """Read a case's channels and maps (with the voxel checks of the integrity check)."""
    images, geometry, dtypes = read_case_channels(case.images)
    label = read_map(case.label, geometry, "label")
    brain = read_map(case.brain_mask, geometry, "brain mask")
    tissue = read_map(case.tissue, geometry, "tissue map")
    return LoadedCase(case, images, geometry, dtypes, None if label is None else label.astype(np.uint8),
                      None if brain is None else brain > 0, None if tissue is None else tissue.astype(np.uint8))


def one_by_one(work_on_case: Callable[[LoadedCase], None]) -> Callable[[list[LoadedCase]], None]:
    """A ``run_cases`` work that does ``work_on_case`` to each case of a group in turn."""
    def work(group: list[LoadedCase]) -> None:
        for loaded in group:
            work_on_case(loaded)

    return work


def run_cases(cases: list[InputCase], out: Path, options: PredictOptions, n_channels: int,
              work: Callable[[list[LoadedCase]], None], plans=None) -> dict[str, int]:
    """Read the cases still to do in groups of ``options.batch_scans`` and hand each group to ``work``.

    With ``plans`` (the model's), every case still to do is first checked to be plausible input for the model
    (:func:`check_plausible`), so a far-off scan stops the run before any case is written.
    """
    check_not_overwriting_inputs(cases, out, options, n_channels)
    out.mkdir(parents=True, exist_ok=True)
    # unfinished outputs of a killed run: only this run's cases (the parts of one prediction may share the folder)
    remove_partial_files(out, [p for c in cases for p in output_files(c, options, out, n_channels)])
    if plans is not None:
        check_cases_plausible([c for c in cases if not _is_done(c, options, out, n_channels)], plans, options.force)
    todo = [c for c in cases if not _is_done(c, options, out, n_channels)]
    with tqdm(total=len(todo), desc=f"lesiongen_predict {options.mode}", unit="case") as progress:
        for start in range(0, len(todo), options.batch_scans):
            group = [load_case(case) for case in todo[start:start + options.batch_scans]]
            work(group)
            progress.update(len(group))
    return {"done": len(todo), "skipped": len(cases) - len(todo)}


def read_case_channels(paths: list[Path],
                       reader: str | None = None) -> tuple[np.ndarray, ImageGeometry, list[np.dtype]]:
    """(c, z, y, x) float32 channels, their shared geometry and each file's own dtype (outputs keep it)."""
    arrays, dtypes, geometry = [], [], None
    for path in paths:
        array, geo = read_image(path, reader)
        if geometry is None:
            geometry = geo
        elif (mismatch := geo.matches(geometry)) is not None:
            raise LesiongenError(f"{path}: {mismatch} of {paths[0].name}")
        if not np.all(np.isfinite(array)):
            raise LesiongenError(f"{path}: contains NaN or Inf")
        dtypes.append(array.dtype)
        arrays.append(array.astype(np.float32, copy=False))
    return np.stack(arrays), geometry, dtypes


def write_channels(images: np.ndarray, geometry: ImageGeometry, stem: Path, ending: str,
                   dtypes: list[np.dtype]) -> None:
    for c, image in enumerate(images):
        write_image(Path(f"{stem}_{c:04d}{ending}"), cast_to(image, dtypes[c]), geometry)
