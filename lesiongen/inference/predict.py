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

from lesiongen.io.images import SUPPORTED_ENDINGS, ImageGeometry, file_ending, read_image, write_image
from lesiongen.utilities.dtypes import cast_to
from lesiongen.utilities.errors import LesiongenError

logger = logging.getLogger(__name__)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class InputCase:
    case_id: str
    images: list[Path]
    ending: str
    label: Path | None = None  # remove mode: the lesions to remove
    brain_mask: Path | None = None
    tissue: Path | None = None


MODES = ("synth", "seg", "remove")


@dataclass
class PredictOptions:
    mode: str  # synth | seg | remove
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
    save_probabilities: bool = False
    mirror: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LesiongenError(f"unknown mode '{self.mode}'; choose one of {', '.join(MODES)}")
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


def run_cases(cases: list[InputCase], out: Path, options: PredictOptions, n_channels: int,
              work: Callable[..., None]) -> dict[str, int]:
    """Read each case (with the voxel checks of the integrity check) and hand it to ``work``."""
    check_not_overwriting_inputs(cases, out, options, n_channels)
    out.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    for case in tqdm(cases, desc=f"lesiongen_predict {options.mode}", unit="case"):
        if options.resume and all(p.is_file() for p in output_files(case, options, out, n_channels)):
            skipped += 1
            continue
        images, geometry, dtypes = read_case_channels(case.images)
        label = read_map(case.label, geometry, "label")
        brain = read_map(case.brain_mask, geometry, "brain mask")
        tissue = read_map(case.tissue, geometry, "tissue map")
        work(case, images, geometry, dtypes, None if label is None else label.astype(np.uint8),
             None if brain is None else brain > 0, None if tissue is None else tissue.astype(np.uint8))
        done += 1
    return {"done": done, "skipped": skipped}


def read_case_channels(paths: list[Path], reader: str | None = None) -> tuple[np.ndarray, ImageGeometry, list[np.dtype]]:
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
