"""A complete nnU-Net v2 raw dataset made of real training cases plus synthetic lesion cases.

``export_nnunet`` writes ``OUT_ROOT/DatasetYYY_<Name>Synth/``:

* unless ``synthetic_only``, every real training case of the raw dataset, byte-copied
  (``imagesTr/{case}_{XXXX}{ending}``, ``labelsTr/{case}{ending}``);
* ``n`` synthetic cases ``syn_0000`` ... made from healthy scans in turn (``i % n_healthy``) with one fold's mask
  generator and inpainter, on the healthy scan's own grid (geometry, per-channel dtype); labels are uint8. The healthy
  scans are the raw dataset's ``imagesHealthy`` or any folder of scans the user passes (then, with
  ``synthetic_only``, no raw or preprocessed data is needed at all: the models come from their model folders);
* dataset.json with nnU-Net v2's keys and a ``lesiongen`` entry that records how the cases were made (models with
  their sha256, seeds, code version; nnU-Net ignores keys it does not know).

The dataset is built in a hidden sibling folder and swapped into place at the end (``atomic_folder``): a killed run
leaves either no dataset or the previous one, never half a dataset.

``check_nnunet_layout`` checks a folder against nnU-Net v2's raw format without nnunetv2 installed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesiongen.inference.predict import read_case_channels, read_map
from lesiongen.inference.strategies import WHOLE_SCAN, strategy as get_strategy
from lesiongen.inference.synthesis import EditJob, SynthesisResult, run_jobs, synthesis_job
from lesiongen.io.dataset import CaseFiles, DatasetInfo, RawDataset
from lesiongen.io.images import (READER_ALIASES, SUPPORTED_ENDINGS, ImageGeometry, read_geometry, read_image,
                                  write_image)
from lesiongen.models.folder import ModelFolder, trainer_folder_name
from lesiongen.models.inpainter import Inpainter
from lesiongen.models.mask_generators import MaskGenerator
from lesiongen.models.registry import load_model
from lesiongen.utilities.dtypes import cast_to
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_folder, write_json
from lesiongen.utilities.provenance import code_version
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "syn_"
EMPTY_RETRIES = 3  # a draw may give no lesion (e.g. all masks below the minimum size); redraw with another seed
_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(\S+)$")
_NNUNET_REQUIRED = {"channel_names": dict, "labels": dict, "numTraining": int, "file_ending": str}


# ------------------------------------------------------------------------------------------------- export


def output_folder_name(source_name: str, dataset_id: int) -> str:
    """``Dataset601_DemoMSSynth`` for source ``Dataset501_DemoMS`` and ID 601."""
    match = _DATASET_FOLDER.match(source_name)
    name = match.group(2) if match else source_name
    return f"Dataset{dataset_id:03d}_{name}Synth"


def _check_output(out_root: Path, folder_name: str, dataset_id: int, overwrite: bool, inputs: list[Path]) -> None:
    target = out_root / folder_name
    resolved_root = out_root.resolve()
    for source_folder in inputs:
        source = source_folder.resolve()
        if resolved_root == source or source in resolved_root.parents:
            raise LesiongenError(f"{out_root}: lies inside the input folder {source_folder}; lesiongen never writes "
                                 "into its inputs")
    if out_root.is_dir():
        for other in sorted(out_root.iterdir()):
            match = _DATASET_FOLDER.match(other.name)
            if other.is_dir() and match and int(match.group(1)) == dataset_id and other.name != folder_name:
                raise LesiongenError(f"{other}: dataset ID {dataset_id:03d} is already used by another folder in "
                                     f"{out_root}; choose another --id")
    if target.exists() and not overwrite:
        raise LesiongenError(f"{target}: output dataset already exists (use --overwrite to replace it)")


def _model_folders(models: Path, strategy: str, plans_name: str, fold: int | str | None
                   ) -> tuple[ModelFolder, ModelFolder, int | str]:
    """(mask generator, inpainter, fold): the requested fold, else ``all`` when both are trained there, else 0."""
    generator_kind = get_strategy(strategy, WHOLE_SCAN).mask_generator
    folders = {kind: ModelFolder(models / trainer_folder_name(kind, plans_name))
               for kind in (generator_kind, "inpaint")}
    if fold is None:
        fold = "all" if all(f.checkpoint("all").is_file() for f in folders.values()) else 0
    missing = [kind for kind, f in folders.items() if not f.checkpoint(fold).is_file()]
    if missing:
        commands = "; ".join(f"lesiongen_train {models.name} {kind} {fold}" for kind in missing)
        raise LesiongenError(f"no trained {' and '.join(missing)} for fold {fold} of {models.name} "
                             f"({folders[missing[0]].checkpoint(fold)} not found); run {commands}")
    return folders[generator_kind].check(), folders["inpaint"].check(), fold


def _nnunet_json(info: DatasetInfo, source_json: dict, folder_name: str, num_training: int, record: dict) -> dict:
    out = {
        "name": folder_name.split("_", 1)[1],
        "description": f"{'real training cases plus ' if record['num_real'] else ''}{record['n']} synthetic lesion "
                       f"cases ({record['strategy']}, lesiongen) from {record['source_dataset']}",
        "channel_names": dict(info.channel_names),
        "labels": dict(info.labels),
        "numTraining": num_training,
        "file_ending": info.file_ending,
    }
    if "overwrite_image_reader_writer" in source_json:
        out["overwrite_image_reader_writer"] = source_json["overwrite_image_reader_writer"]
    out["lesiongen"] = record
    return out


def export_nnunet(models: Path, strategy: str, n: int, out_root: str | Path, dataset_id: int,
                  healthy: list[CaseFiles], raw: RawDataset | None = None, plans_name: str = "lesiongenPlans",
                  fold: int | str | None = None, device: str = "cpu", seed: int = 0,
                  overwrite: bool = False, batch_scans: int = 1) -> Path:
    """Write the nnU-Net v2 raw dataset ``out_root/Dataset{dataset_id}_<Name>Synth``; returns its folder.

    ``models`` is the results dataset folder holding the model folders; ``raw``, when given, contributes its real
    training cases (copied unchanged). Everything that can be checked is checked before the first file is written.
    Synthetic cases are made ``batch_scans`` at a time, their lesions sharing the networks' calls (each case is the
    one it is alone).
    """
    get_strategy(strategy, WHOLE_SCAN)
    if n < 1:
        raise LesiongenError(f"--n must be at least 1, got {n}")
    if batch_scans < 1:
        raise LesiongenError(f"--batch_scans must be at least 1, got {batch_scans}")
    if not 1 <= dataset_id <= 999:
        raise LesiongenError(f"--id must be 1-999, got {dataset_id}")
    if not healthy:
        raise LesiongenError("no healthy scans to put synthetic lesions into (the raw dataset has no imagesHealthy; "
                             "pass --healthy DIR)")
    out_root = Path(out_root)
    generator_folder, inpainter_folder, fold = _model_folders(models, strategy, plans_name, fold)
    info = inpainter_folder.dataset_info()
    source_json = json.loads((inpainter_folder.path / "dataset.json").read_text())
    inputs = [generator_folder.path, inpainter_folder.path] + sorted({s.images[0].parent for s in healthy})
    if raw is not None:
        errors = [p for p in raw.layout_problems if not p.is_warning]
        if errors:
            raise LesiongenError(f"{raw.folder}: {len(errors)} problem(s) in the source dataset (first: {errors[0]}); "
                                 f"run lesiongen_plan_and_preprocess -d {raw.dataset_id} --verify_dataset_integrity")
        clashes = [c.case_id for c in raw.training if c.case_id.startswith(SYNTHETIC_PREFIX)]
        if clashes:
            raise LesiongenError(f"training case {clashes[0]} clashes with the synthetic case names "
                                 f"{SYNTHETIC_PREFIX}XXXX")
        info, source_json = raw.info, json.loads((raw.folder / "dataset.json").read_text())
        inputs.append(raw.folder)
    folder_name = output_folder_name(models.name, dataset_id)
    _check_output(out_root, folder_name, dataset_id, overwrite, inputs)

    generator = load_model(generator_folder, fold, device, expect=MaskGenerator)
    inpainter = load_model(inpainter_folder, fold, device, expect=Inpainter)
    ending, reader = info.file_ending, info.reader
    real_cases = raw.training if raw is not None else []
    record = {"source_dataset": models.name, "strategy": strategy, "fold": str(fold), "n": n, "seed": seed,
              "num_real": len(real_cases), "models": {"mask_generator": generator.record(),
                                                      "inpainter": inpainter.record()},
              "code": code_version(), "synthetic_cases": []}
    target = out_root / folder_name
    logger.info("exporting %d real + %d synthetic (%s, fold %s) case(s) to %s", len(real_cases), n, strategy, fold,
                target)
    with atomic_folder(target, replace=overwrite) as staging:
        images_tr, labels_tr = staging / "imagesTr", staging / "labelsTr"
        images_tr.mkdir()
        labels_tr.mkdir()
        for case in real_cases:
            for path in case.images:
                shutil.copyfile(path, images_tr / path.name)
            shutil.copyfile(case.label, labels_tr / f"{case.case_id}{ending}")
        with tqdm(total=n, desc="lesiongen_export_nnunet", unit="case") as progress:
            for start in range(0, n, batch_scans):
                group = range(start, min(n, start + batch_scans))
                scans = [_read_healthy(healthy[i % len(healthy)], reader) for i in group]
                results = run_jobs([_synthetic_case_job(scan, i, seed, inpainter, generator)
                                    for i, scan in zip(group, scans)])
                for i, scan, (result, used_seed) in zip(group, scans, results, strict=True):
                    case_id = f"{SYNTHETIC_PREFIX}{i:04d}"
                    for c, image in enumerate(result.images):
                        write_image(images_tr / f"{case_id}_{c:04d}{ending}", cast_to(image, scan.dtypes[c]),
                                    scan.geometry, reader)
                    write_image(labels_tr / f"{case_id}{ending}", result.label.astype(np.uint8), scan.geometry,
                                reader)
                    record["synthetic_cases"].append({"case": case_id, "source_healthy_case": scan.case_id,
                                                      "seed": used_seed, "lesions": len(result.lesions),
                                                      "lesion_voxels": int((result.label > 0).sum())})
                progress.update(len(group))
        write_json(staging / "dataset.json", _nnunet_json(info, source_json, folder_name, len(real_cases) + n, record))
    return target


@dataclass
class _HealthyScan:
    case_id: str
    images: np.ndarray
    geometry: ImageGeometry
    dtypes: list[np.dtype]
    brain: np.ndarray | None
    tissue: np.ndarray | None


def _read_healthy(scan: CaseFiles, reader: str | None) -> _HealthyScan:
    images, geometry, dtypes = read_case_channels(scan.images, reader)
    brain = read_map(scan.brain_mask, geometry, "brain mask", reader)
    tissue = read_map(scan.tissue, geometry, "tissue map", reader)
    return _HealthyScan(scan.case_id, images, geometry, dtypes, None if brain is None else brain > 0,
                        None if tissue is None else tissue.astype(np.uint8))


def _synthetic_case_job(scan: _HealthyScan, index: int, seed: int, inpainter: Inpainter,
                        generator: MaskGenerator) -> EditJob[tuple[SynthesisResult, int]]:
    """Synthetic case ``index`` from ``scan``, redrawn while it holds no lesion; its result and the seed used."""
    for attempt in range(EMPTY_RETRIES):
        used_seed = derive_seed(seed, "export", index, attempt)
        result = yield from synthesis_job(scan.images, list(scan.geometry.spacing_zyx), inpainter.plans, inpainter,
                                          generator, seed=used_seed, brain_mask=scan.brain, tissue=scan.tissue)
        if result.label.any():
            return result, used_seed
    logger.warning("%s%04d (from %s): no lesion after %d draws; kept with an empty label", SYNTHETIC_PREFIX, index,
                   scan.case_id, EMPTY_RETRIES)
    return result, used_seed


# -------------------------------------------------------------------------------------------------- check


def _json_problems(raw, where: str) -> list[str]:
    problems = []
    for key, kind in _NNUNET_REQUIRED.items():
        if key not in raw:
            problems.append(f"{where}: required key '{key}' is missing")
        elif isinstance(raw[key], bool) or not isinstance(raw[key], kind):
            problems.append(f"{where}: '{key}' must be a {kind.__name__}, got {type(raw[key]).__name__}")
    if problems:
        return problems
    channels = raw["channel_names"]
    if not channels:
        problems.append(f"{where}: 'channel_names' is empty")
    elif sorted(channels, key=lambda k: (len(str(k)), str(k))) != [str(i) for i in range(len(channels))]:
        problems.append(f"{where}: 'channel_names' keys must be 0..{len(channels) - 1}, got {list(channels)}")
    if any(not isinstance(v, str) for v in channels.values()):
        problems.append(f"{where}: 'channel_names' values must be strings")
    labels = raw["labels"]
    values = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)) and "regions_class_order" in raw:
            continue  # region-based training: nnU-Net checks the regions itself
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: label {name!r} must be an integer, got {value!r}")
        else:
            values.append(value)
    if labels.get("background") != 0:
        problems.append(f"{where}: 'labels' must map 'background' to 0")
    if values and sorted(values) != list(range(len(values))):
        problems.append(f"{where}: label values must be consecutive 0, 1, 2, ..., got {sorted(values)}")
    if raw["numTraining"] < 1:
        problems.append(f"{where}: 'numTraining' must be positive, got {raw['numTraining']}")
    ending = raw["file_ending"]
    if not ending.startswith(".") or ending.lower() not in SUPPORTED_ENDINGS:
        problems.append(f"{where}: 'file_ending' {ending!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
    reader = raw.get("overwrite_image_reader_writer")
    if reader is not None and reader not in READER_ALIASES:
        problems.append(f"{where}: 'overwrite_image_reader_writer' {reader!r} is not one of {sorted(READER_ALIASES)}")
    return problems


def check_nnunet_layout(folder: Path) -> list[str]:
    """Problems of ``folder`` as an nnU-Net v2 raw dataset (``path: problem`` lines); empty when it is fine.

    Checks dataset.json (required keys and their types, channel indices, consecutive integer labels with background
    0), that imagesTr/labelsTr hold exactly ``{case}_{XXXX}{ending}`` / ``{case}{ending}`` files with every channel
    of every case and nothing else, that numTraining equals the number of labels, that every label's values are
    declared and that images and labels agree in shape and spacing (from the headers; labels are read in full).
    """
    folder = Path(folder)
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        return [f"{json_path}: dataset.json is missing"]
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{json_path}: malformed JSON ({exc})"]
    if not isinstance(raw, dict):
        return [f"{json_path}: must hold a JSON object"]
    problems = _json_problems(raw, str(json_path))
    if problems:
        return problems
    for sub in ("imagesTr", "labelsTr"):
        if not (folder / sub).is_dir():
            problems.append(f"{folder / sub}: required folder is missing")
    if problems:
        return problems

    ending = raw["file_ending"]
    n_channels = len(raw["channel_names"])
    reader_name = raw.get("overwrite_image_reader_writer")
    reader = reader_name if reader_name in READER_ALIASES else None
    declared = {v for v in raw["labels"].values() if isinstance(v, int)}
    channel_file = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

    cases: dict[str, dict[int, Path]] = {}
    for path in sorted((folder / "imagesTr").iterdir()):
        match = channel_file.match(path.name[: -len(ending)]) if path.name.endswith(ending) else None
        if not path.is_file() or match is None:
            problems.append(f"{path}: extra file; imagesTr may hold only {{case}}_{{XXXX}}{ending} files")
            continue
        cases.setdefault(match.group("case"), {})[int(match.group("channel"))] = path
    labels: dict[str, Path] = {}
    for path in sorted((folder / "labelsTr").iterdir()):
        if not path.is_file() or not path.name.endswith(ending) or len(path.name) == len(ending):
            problems.append(f"{path}: extra file; labelsTr may hold only {{case}}{ending} files")
            continue
        labels[path.name[: -len(ending)]] = path

    if raw["numTraining"] != len(labels):
        problems.append(f"{json_path}: numTraining is {raw['numTraining']} but labelsTr holds {len(labels)} label(s)")
    for case, channels in sorted(cases.items()):
        for c in range(n_channels):
            if c not in channels:
                problems.append(f"{folder / 'imagesTr' / f'{case}_{c:04d}{ending}'}: missing channel {c} of {case}")
        for c in sorted(set(channels) - set(range(n_channels))):
            problems.append(f"{channels[c]}: extra channel {c}; dataset.json declares {n_channels} channel(s)")
        if case not in labels:
            problems.append(f"{folder / 'labelsTr' / f'{case}{ending}'}: missing label of case {case}")
    for case, path in sorted(labels.items()):
        if case not in cases:
            problems.append(f"{path}: label without images")

    for case, label_path in sorted(labels.items()):
        if case not in cases:
            continue
        try:
            label, label_geo = read_image(label_path, reader)
        except LesiongenError as exc:
            problems.append(str(exc))
            continue
        values = np.unique(label)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            problems.append(f"{label_path}: label values must be integers")
        else:
            undeclared = sorted(int(v) for v in values if int(v) not in declared)
            if undeclared:
                problems.append(f"{label_path}: label values {undeclared} are not declared in dataset.json")
        for c, image_path in sorted(cases[case].items()):
            try:
                geo = read_geometry(image_path, reader)
            except LesiongenError as exc:
                problems.append(str(exc))
                continue
            if geo.shape != label_geo.shape:
                problems.append(f"{image_path}: shape {geo.shape} differs from its label's {label_geo.shape}")
            elif not np.allclose(geo.spacing, label_geo.spacing):
                problems.append(f"{image_path}: spacing {geo.spacing} differs from its label's {label_geo.spacing}")
    return problems
