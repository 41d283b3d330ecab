"""The raw dataset layout (see ``lesiongen_raw_spec.md``): finding a dataset, reading dataset.json, listing cases.

Everything here is cheap (no voxel data is read). Problems are collected, not raised one at a time, so the user
sees all of them in one run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lesiongen.io.images import READER_ALIASES, SUPPORTED_ENDINGS, file_ending
from lesiongen.paths import raw_root
from lesiongen.utilities.errors import DatasetError, LesiongenError, Problem

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(\S+)$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# split name -> (image folder, label folder, tissue folder, brain mask folder)
SPLIT_FOLDERS = {
    "training": ("imagesTr", "labelsTr", "tissueTr", "brainmasksTr"),
    "healthy": ("imagesHealthy", None, "tissueHealthy", "brainmasksHealthy"),
    "test": ("imagesTs", "labelsTs", None, None),
}


def lesion_values(labels: dict[str, int]) -> list[int]:
    """The lesion classes of a ``labels`` mapping: every value but background (0), sorted."""
    return sorted(v for v in labels.values() if v != 0)


@dataclass(frozen=True)
class DatasetInfo:
    """The typed content of dataset.json."""

    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int
    file_ending: str
    reader: str | None = None
    tissue_labels: dict[str, int] = field(default_factory=dict)
    num_healthy: int | None = None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def lesion_labels(self) -> list[int]:
        return lesion_values(self.labels)


@dataclass
class CaseFiles:
    """The files of one case: one image per channel, and the optional per-case maps."""

    case_id: str
    images: list[Path]
    label: Path | None = None
    tissue: Path | None = None
    brain_mask: Path | None = None

    def all_files(self) -> list[Path]:
        return [p for p in [*self.images, self.label, self.tissue, self.brain_mask] if p is not None]


@dataclass
class RawDataset:
    folder: Path
    dataset_id: int
    info: DatasetInfo
    training: list[CaseFiles]
    healthy: list[CaseFiles]
    test: list[CaseFiles]
    layout_problems: list[Problem] = field(default_factory=list)  # names and counts, from scan_dataset

    @property
    def name(self) -> str:
        return self.folder.name

    def split(self, name: str) -> list[CaseFiles]:
        return {"training": self.training, "healthy": self.healthy, "test": self.test}[name]


def find_dataset_folder(identifier: str | int, root: Path | None = None) -> Path:
    """Resolve ``501``, ``"501"`` or ``"Dataset501_Name"`` to the dataset folder below ``root`` (default: raw)."""
    root = Path(root) if root is not None else raw_root()
    text = str(identifier).strip()
    if not root.is_dir():
        raise LesiongenError(f"{root}: folder does not exist (check lesiongen_raw / _preprocessed / _results)")
    if text.isdigit():
        wanted = int(text)
        matches = sorted(
            p for p in root.iterdir()
            if p.is_dir() and (m := _DATASET_FOLDER.match(p.name)) and int(m.group(1)) == wanted
        )
        if not matches:
            raise LesiongenError(f"{root}: no dataset folder with ID {wanted:03d} (expected Dataset{wanted:03d}_Name)")
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise LesiongenError(f"{root}: dataset ID {wanted:03d} is ambiguous ({names})")
        return matches[0]
    folder = root / text
    if not _DATASET_FOLDER.match(text):
        raise LesiongenError(f"{folder}: not a dataset name; expected an ID like 501 or a name like Dataset501_Name")
    if not folder.is_dir():
        raise LesiongenError(f"{folder}: dataset folder not found")
    return folder


def dataset_id_of(folder: Path) -> int:
    match = _DATASET_FOLDER.match(folder.name)
    if not match:
        raise LesiongenError(f"{folder}: folder name must look like DatasetXXX_Name")
    return int(match.group(1))


def _int_mapping(value, key: str, where: str, problems: list[Problem]) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        problems.append(Problem(where, f"'{key}' must be a non-empty object of name -> integer"))
        return {}
    result = {}
    for name, v in value.items():
        if isinstance(v, (list, tuple)):
            problems.append(Problem(where, f"'{key}' entry {name!r} is a region (list); "
                                           "lesion labels must be single integers"))
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(Problem(where, f"'{key}' entry {name!r} must be a non-negative integer, got {v!r}"))
        else:
            result[str(name)] = v
    if len(set(result.values())) != len(result):
        problems.append(Problem(where, f"'{key}' has repeated values"))
    return result


def parse_dataset_json(path: Path) -> tuple[DatasetInfo | None, list[Problem]]:
    """Read and validate dataset.json; returns (info or None, problems)."""
    where = str(path)
    if not path.is_file():
        return None, [Problem(where, "dataset.json is missing")]
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(where, f"malformed JSON ({exc})")]
    if not isinstance(raw, dict):
        return None, [Problem(where, "must hold a JSON object")]
    problems: list[Problem] = []
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in raw:
            problems.append(Problem(where, f"required key '{key}' is missing"))
    if problems:
        return None, problems

    channels = raw["channel_names"]
    if not isinstance(channels, dict) or not channels:
        problems.append(Problem(where, "'channel_names' must be a non-empty object of index -> name"))
        channels = {}
    else:
        keys = sorted(channels, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
            problems.append(Problem(where, f"'channel_names' keys must be 0..{len(keys) - 1}, got {list(channels)}"))
        channels = {str(k): str(channels[k]) for k in keys}

    labels = _int_mapping(raw["labels"], "labels", where, problems)
    if labels and labels.get("background") != 0:
        problems.append(Problem(where, "'labels' must map 'background' to 0"))
    if labels and len(labels) < 2:
        problems.append(Problem(where, "'labels' declares no lesion class"))

    num_training = raw["numTraining"]
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
        problems.append(Problem(where, f"'numTraining' must be a positive integer, got {num_training!r}"))

    ending = raw["file_ending"]
    if not isinstance(ending, str) or ending.lower() not in SUPPORTED_ENDINGS:
        problems.append(Problem(where, f"'file_ending' {ending!r} is not supported; "
                                       f"use one of {', '.join(SUPPORTED_ENDINGS)}"))

    reader = raw.get("overwrite_image_reader_writer")
    if reader is not None and reader not in READER_ALIASES:
        problems.append(Problem(where, f"'overwrite_image_reader_writer' {reader!r} is not supported; "
                                       f"use one of {sorted(READER_ALIASES)}"))

    tissue_labels = {}
    if "tissue_labels" in raw:
        tissue_labels = _int_mapping(raw["tissue_labels"], "tissue_labels", where, problems)
    num_healthy = raw.get("numHealthy")
    if num_healthy is not None and (isinstance(num_healthy, bool) or not isinstance(num_healthy, int)
                                    or num_healthy < 0):
        problems.append(Problem(where, f"'numHealthy' must be a non-negative integer, got {num_healthy!r}"))

    if problems:
        return None, problems
    return DatasetInfo(
        channel_names=channels,
        labels=labels,
        num_training=num_training,
        file_ending=ending,
        reader=reader,
        tissue_labels=tissue_labels,
        num_healthy=num_healthy,
    ), []


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _collect_images(folder: Path, info: DatasetInfo, problems: list[Problem]) -> dict[str, list[Path]]:
    """Group ``{case}_{XXXX}{ending}`` files by case; every case must have exactly the declared channels."""
    ending = info.file_ending
    by_case: dict[str, dict[int, Path]] = {}
    for path in _visible_files(folder):
        if not path.name.endswith(ending):
            problems.append(Problem(str(path), f"ignored: file ending is not the dataset's {ending}", is_warning=True))
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if not match:
            problems.append(Problem(str(path), "image file name must be {case}_{XXXX}" + ending))
            continue
        by_case.setdefault(match.group("case"), {})[int(match.group("channel"))] = path
    expected = set(range(info.num_channels))
    cases = {}
    for case, channels in sorted(by_case.items()):
        missing = sorted(expected - set(channels))
        extra = sorted(set(channels) - expected)
        for c in missing:
            problems.append(Problem(str(folder / f"{case}_{c:04d}{ending}"), f"missing channel {c} of case {case}"))
        for c in extra:
            problems.append(Problem(str(channels[c]),
                                    f"extra channel {c}: dataset.json declares {info.num_channels} channel(s)"))
        cases[case] = [channels[c] for c in sorted(expected & set(channels))]
    return cases


def _per_case_files(folder: Path, cases: list[str], info: DatasetInfo, what: str,
                    problems: list[Problem]) -> dict[str, Path]:
    """Files named ``{case}{ending}`` (labels, tissue maps, brain masks): one per case, none without a case."""
    ending = info.file_ending
    present = {}
    for path in _visible_files(folder):
        if path.name.endswith(ending):
            present[path.name[: -len(ending)]] = path
        else:
            problems.append(Problem(str(path), f"ignored: file ending is not the dataset's {ending}", is_warning=True))
    for case in cases:
        if case not in present:
            problems.append(Problem(str(folder / f"{case}{ending}"), f"missing {what} of case {case}"))
    for name, path in sorted(present.items()):
        if name not in cases:
            problems.append(Problem(str(path), f"{what} without a matching image"))
    return present


def file_ending_problem(folder: Path, info: DatasetInfo) -> Problem | None:
    """dataset.json's ``file_ending`` named as the mistake when most training images end in another supported one.

    Otherwise every image is reported as "ignored" and numTraining as wrong, which hides the one-word cause.
    """
    images = folder / SPLIT_FOLDERS["training"][0]
    if not images.is_dir():
        return None
    endings = Counter(file_ending(p) for p in _visible_files(images))
    declared = info.file_ending.lower()
    others = {e: n for e, n in endings.items() if e in SUPPORTED_ENDINGS and e != declared}
    if not others:
        return None
    common, count = max(others.items(), key=lambda item: item[1])
    if endings.get(declared, 0) >= count or 2 * count <= sum(endings.values()):
        return None  # the declared ending is as common, or the other one is no majority: per-file messages fit
    return Problem(str(folder / "dataset.json"),
                   f"file_ending is '{info.file_ending}' but the images end in '{common}'")


def scan_dataset(folder: Path) -> tuple[RawDataset | None, list[Problem]]:
    """List all cases of a raw dataset folder and check names and counts (no file is opened but dataset.json)."""
    info, problems = parse_dataset_json(folder / "dataset.json")
    if info is None:
        return None, problems
    wrong_ending = file_ending_problem(folder, info)
    if wrong_ending is not None:
        return None, [wrong_ending]
    splits: dict[str, list[CaseFiles]] = {}
    for split, (image_dir, label_dir, tissue_dir, mask_dir) in SPLIT_FOLDERS.items():
        image_folder = folder / image_dir
        if not image_folder.is_dir():
            if split == "training":
                problems.append(Problem(str(image_folder), "required folder is missing"))
            splits[split] = []
            continue
        images = _collect_images(image_folder, info, problems)
        case_ids = list(images)
        cases = {c: CaseFiles(c, images[c]) for c in case_ids}
        extra_folders = [("label", label_dir, "label"), ("tissue", tissue_dir, "tissue map"),
                         ("brain_mask", mask_dir, "brain mask")]
        for attribute, sub, what in extra_folders:
            if sub is None or not (folder / sub).is_dir():
                if attribute == "label" and split == "training":
                    problems.append(Problem(str(folder / sub), "required folder is missing"))
                continue
            for case, path in _per_case_files(folder / sub, case_ids, info, what, problems).items():
                if case in cases:
                    setattr(cases[case], attribute, path)
        splits[split] = list(cases.values())

    if len(splits["training"]) != info.num_training:
        problems.append(Problem(str(folder / "dataset.json"),
                                f"numTraining is {info.num_training} "
                                f"but imagesTr holds {len(splits['training'])} case(s)"))
    if info.num_healthy is not None and len(splits["healthy"]) != info.num_healthy:
        problems.append(Problem(str(folder / "dataset.json"),
                                f"numHealthy is {info.num_healthy} "
                                f"but imagesHealthy holds {len(splits['healthy'])} case(s)"))
    dataset = RawDataset(folder, dataset_id_of(folder), info, splits["training"], splits["healthy"], splits["test"],
                         layout_problems=problems)
    return dataset, problems


def load_dataset(identifier: str | int, root: Path | None = None) -> RawDataset:
    """Find and scan a dataset. Raises DatasetError only when dataset.json is unusable; problems with
    case files stay in ``layout_problems`` so that the integrity check can report them with its own."""
    folder = find_dataset_folder(identifier, root)
    dataset, problems = scan_dataset(folder)
    if dataset is None:
        raise DatasetError(problems)
    return dataset
