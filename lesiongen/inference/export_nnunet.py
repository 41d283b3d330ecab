"""A complete nnU-Net v2 raw dataset made of a dataset's real training cases plus synthetic lesion cases.

``export_nnunet`` writes ``OUT_ROOT/DatasetYYY_<Name>Synth/``:

* every real training case of the source dataset, byte-copied (``imagesTr/{case}_{XXXX}{ending}``,
  ``labelsTr/{case}{ending}``);
* ``n`` synthetic cases ``syn_0000`` … made from the healthy scans in turn (``i % n_healthy``) with one fold's mask
  generator and inpainter, on the healthy scan's own grid (geometry, per-channel dtype, the dataset's file ending and
  image reader/writer); labels are uint8;
* dataset.json with nnU-Net v2's keys and a ``lesiongen`` entry that records how the cases were made (nnU-Net
  ignores keys it does not know).

The dataset is built in a hidden sibling folder and renamed into place at the end: a killed run leaves either no
dataset or the previous one, never half a dataset.

``check_nnunet_layout`` checks a folder against nnU-Net v2's raw format without nnunetv2 installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lesiongen.inference.predict import cast_like, read_case_channels, read_map
from lesiongen.io.images import READER_ALIASES, SUPPORTED_ENDINGS, read_geometry, read_image, write_image
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import write_json

logger = logging.getLogger(__name__)

# strategies the export supports: a mask generator (trainer name) + the inpainter, applied to whole scans
EXPORT_STRATEGIES = {"sphere": "spheremask", "unetmask": "unetmask", "diffmask": "diffmask"}
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


def _check_output(out_root: Path, folder_name: str, dataset_id: int, overwrite: bool, source_folder: Path) -> None:
    target = out_root / folder_name
    source = source_folder.resolve()
    resolved_root = out_root.resolve()
    if resolved_root == source or source in resolved_root.parents:
        raise LesiongenError(f"{out_root}: lies inside the source dataset {source_folder}; lesiongen never writes "
                             "into a raw dataset folder")
    if out_root.is_dir():
        for other in sorted(out_root.iterdir()):
            match = _DATASET_FOLDER.match(other.name)
            if other.is_dir() and match and int(match.group(1)) == dataset_id and other.name != folder_name:
                raise LesiongenError(f"{other}: dataset ID {dataset_id:03d} is already used by another folder in "
                                     f"{out_root}; choose another --id")
    if target.exists() and not overwrite:
        raise LesiongenError(f"{target}: output dataset already exists (use --overwrite to replace it)")


def _trained_fold(dataset, names: list[str], fold: int | str | None) -> int | str:
    """The requested fold, else ``all`` when every model has a final checkpoint there, else 0."""
    from lesiongen.training.base import trainer_folder
    from lesiongen.training.checkpoint import FINAL

    def final(name: str, f) -> Path:
        return trainer_folder(dataset.name, name, dataset.plans.plans_name) / f"fold_{f}" / FINAL

    if fold is None:
        fold = "all" if all(final(n, "all").is_file() for n in names) else 0
    missing = [n for n in names if not final(n, fold).is_file()]
    if missing:
        commands = "; ".join(f"lesiongen_train {dataset.name} {n} {fold}" for n in missing)
        raise LesiongenError(f"no trained {' and '.join(missing)} for fold {fold} of {dataset.name} "
                             f"({final(missing[0], fold)} not found); run {commands}")
    return fold


def _nnunet_json(source_json: dict, info, folder_name: str, num_training: int, record: dict) -> dict:
    out = {
        "name": folder_name.split("_", 1)[1],
        "description": f"{source_json.get('name', record['source_dataset'])} training cases plus "
                       f"{record['n']} synthetic lesion cases ({record['strategy']}, lesiongen)",
        "channel_names": dict(info.channel_names),
        "labels": dict(source_json["labels"]),
        "numTraining": num_training,
        "file_ending": info.file_ending,
    }
    if "overwrite_image_reader_writer" in source_json:
        out["overwrite_image_reader_writer"] = source_json["overwrite_image_reader_writer"]
    out["lesiongen"] = record
    return out


def export_nnunet(source: str | int, strategy: str, n: int, out_root: str | Path, dataset_id: int,
                  fold: int | str | None = None, device: str = "cpu", seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write the nnU-Net v2 raw dataset ``out_root/Dataset{dataset_id}_<Name>Synth``; returns its folder.

    ``fold`` picks the trained mask generator and inpainter (default ``all`` when both are trained on all cases,
    else 0). Everything that can be checked is checked before the first file is written.
    """
    from lesiongen.inference.synthesis import synthesize
    from lesiongen.io.dataset import load_dataset
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.registry import load_trained

    if strategy not in EXPORT_STRATEGIES:
        raise LesiongenError(f"--synthetic {strategy}: the export supports {', '.join(EXPORT_STRATEGIES)} (whole-scan "
                             "mask generator + inpainter); copy_paste exists only in model space for seg training")
    if n < 1:
        raise LesiongenError(f"--n must be at least 1, got {n}")
    if not 1 <= dataset_id <= 999:
        raise LesiongenError(f"--id must be 1-999, got {dataset_id}")
    out_root = Path(out_root)

    raw = load_dataset(source)
    errors = [p for p in raw.layout_problems if not p.is_warning]
    if errors:
        raise LesiongenError(f"{raw.folder}: {len(errors)} problem(s) in the source dataset (first: {errors[0]}); "
                             f"run lesiongen_plan_and_preprocess -d {raw.dataset_id} --verify_dataset_integrity")
    if not raw.healthy:
        raise LesiongenError(f"{raw.folder / 'imagesHealthy'}: the dataset has no healthy scans; synthetic cases are "
                             "made from imagesHealthy")
    clashes = [c.case_id for c in raw.training if c.case_id.startswith(SYNTHETIC_PREFIX)]
    if clashes:
        raise LesiongenError(f"training case {clashes[0]} clashes with the synthetic case names {SYNTHETIC_PREFIX}XXXX")
    folder_name = output_folder_name(raw.name, dataset_id)
    _check_output(out_root, folder_name, dataset_id, overwrite, raw.folder)

    dataset = open_preprocessed(raw.name)
    generator_name = EXPORT_STRATEGIES[strategy]
    fold = _trained_fold(dataset, [generator_name, "inpaint"], fold)
    generator = load_trained(dataset, generator_name, fold, device)
    inpainter = load_trained(dataset, "inpaint", fold, device)

    info = raw.info
    ending = info.file_ending
    reader = info.reader
    source_json = json.loads((raw.folder / "dataset.json").read_text())
    record = {"source_dataset": raw.name, "strategy": strategy, "mask_generator": generator_name, "fold": str(fold),
              "n": n, "seed": seed, "num_real": len(raw.training), "synthetic_cases": []}

    out_root.mkdir(parents=True, exist_ok=True)
    target = out_root / folder_name
    token = uuid.uuid4().hex[:8]
    staging = out_root / f".{folder_name}.{token}.partial"
    retired = out_root / f".{folder_name}.{token}.old"
    logger.info("exporting %s: %d real + %d synthetic (%s, fold %s) case(s) to %s", raw.name, len(raw.training), n,
                strategy, fold, target)
    try:
        images_tr, labels_tr = staging / "imagesTr", staging / "labelsTr"
        images_tr.mkdir(parents=True)
        labels_tr.mkdir()
        for case in raw.training:
            for path in case.images:
                shutil.copyfile(path, images_tr / path.name)
            shutil.copyfile(case.label, labels_tr / f"{case.case_id}{ending}")

        for i in tqdm(range(n), desc="lesiongen_export_nnunet", unit="case"):
            healthy = raw.healthy[i % len(raw.healthy)]
            images, geometry, dtypes = read_case_channels(healthy.images, reader)
            brain = read_map(healthy.brain_mask, geometry, "brain mask", reader)
            tissue = read_map(healthy.tissue, geometry, "tissue map", reader)
            case_seed = seed * 100_003 + i
            for attempt in range(EMPTY_RETRIES):
                used_seed = case_seed + attempt * 104_729
                result = synthesize(images, list(geometry.spacing_zyx), dataset.plans, inpainter, generator,
                                    seed=used_seed, brain_mask=None if brain is None else brain > 0,
                                    tissue=None if tissue is None else tissue.astype(np.uint8))
                if result.label.any():
                    break
            else:
                logger.warning("%s%04d (from %s): no lesion after %d draws; kept with an empty label",
                               SYNTHETIC_PREFIX, i, healthy.case_id, EMPTY_RETRIES)
            case_id = f"{SYNTHETIC_PREFIX}{i:04d}"
            for c, image in enumerate(result.images):
                write_image(images_tr / f"{case_id}_{c:04d}{ending}", cast_like(image, dtypes[c]), geometry, reader)
            write_image(labels_tr / f"{case_id}{ending}", result.label.astype(np.uint8), geometry, reader)
            record["synthetic_cases"].append({"case": case_id, "source_healthy_case": healthy.case_id,
                                              "seed": used_seed, "lesions": len(result.lesions),
                                              "lesion_voxels": int((result.label > 0).sum())})

        num_training = len(raw.training) + n
        write_json(staging / "dataset.json", _nnunet_json(source_json, info, folder_name, num_training, record))
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if retired.exists():
            if target.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:  # the new dataset did not make it: put the old one back
                os.replace(retired, target)
    return target


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
