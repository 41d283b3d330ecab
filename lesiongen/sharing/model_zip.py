"""Share trained models as zip archives: export a dataset's trainer folders, install them elsewhere safely.

The archive holds paths relative to the results root (``Dataset501_X/diffmask__lesiongenPlans/fold_0/...``) and a
top-level manifest ``lesiongen_model.json`` with the lesiongen version, the dataset and the sha256 and size of every
member. Installing trusts nothing in the archive: member names, member types, sizes, the manifest and every
checkpoint (``weights_only`` loading, so no pickled code runs) are checked before anything reaches the results root,
and files are unpacked into a temporary folder inside the results root and then moved into place.

Size bombs are refused from the zip directory before a byte is unpacked: more than ``MAX_TOTAL_BYTES`` (4 GB;
``--max_size`` changes it) in all, a member over ``MAX_MEMBER_BYTES`` (2 GB), or a member over 1 MiB that claims to
compress better than ``MAX_COMPRESSION_RATIO`` (200:1; network weights barely compress). While unpacking, no member
may yield more bytes than its header and the manifest declare.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import lesiongen
from lesiongen.io.dataset import find_dataset_folder
from lesiongen.paths import results_root as default_results_root
from lesiongen.models.checkpoint import FINAL, load_checkpoint
from lesiongen.models.folder import DATASET_JSON, PLANS_JSON
from lesiongen.models.postprocessing import POSTPROCESSING_JSON
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import PARTIAL_SUFFIX, atomic_path

logger = logging.getLogger("lesiongen")

MANIFEST = "lesiongen_model.json"
MANIFEST_FORMAT = 1
FOLD_FILES = (FINAL, "training_summary.json", "sphere_priors.json", "summary.json", "progress.png")
VALIDATION = "validation"
MAX_TOTAL_BYTES = 4 * 1000**3  # zip-bomb guard: a dataset's models are far smaller (--max_size raises it)
MAX_MEMBER_BYTES = 2 * 1000**3  # one checkpoint of a large 3D network is a few hundred MB
MAX_COMPRESSION_RATIO = 200  # float32 weights compress about 1.1:1; 200:1 is a run of zeros (a bomb)
RATIO_MIN_BYTES = 1024**2  # small files (JSON, plots) may compress well: the ratio cap starts above this size
MAX_MEMBERS = 100_000
MAX_MANIFEST_BYTES = 64 * 1024**2
_CHUNK = 1024**2

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(\S+)$")
_TRAINER_FOLDER = re.compile(r"^[^_\s][^\s]*__[^\s]+$")
_FOLD_FOLDER = re.compile(r"^fold_(\d+|all)$")


# ------------------------------------------------------------------------------------------------------ export
def resolve_results_dataset(identifier: str | int, root: Path | None = None) -> Path:
    """``501``, ``"501"`` or ``"Dataset501_Name"`` to the dataset's folder below the results root."""
    return find_dataset_folder(identifier, Path(root) if root is not None else default_results_root())


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and PARTIAL_SUFFIX in path.name


def _plain_files_below(folder: Path) -> list[Path]:
    """Regular files below ``folder``, without following symbolic links or taking unfinished writes."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [Path(parent) / n for n in sorted(names)
                  if _is_plain_file(Path(parent) / n) and not _is_partial(Path(parent) / n)]
    return found


def _trainer_folders(dataset_folder: Path, trainers: list[str] | None) -> list[Path]:
    present = sorted(p for p in dataset_folder.iterdir()
                     if p.is_dir() and not p.is_symlink() and _TRAINER_FOLDER.match(p.name))
    if trainers is None:
        if not present:
            raise LesiongenError(f"{dataset_folder}: no trainer folders (TRAINER__PLANS) to export")
        return present
    chosen: list[Path] = []
    for wanted in trainers:
        # a trainer folder name (diffmask) or its full folder name (diffmask__lesiongenPlans)
        matches = [p for p in present if p.name == wanted or p.name.split("__", 1)[0] == wanted]
        if not matches:
            raise LesiongenError(f"{dataset_folder / wanted}: no trainer folder '{wanted}' "
                                 f"(found: {', '.join(p.name for p in present) or 'none'})")
        if len(matches) > 1:
            raise LesiongenError(f"{dataset_folder}: trainer '{wanted}' is ambiguous "
                                 f"({', '.join(p.name for p in matches)}); give the full folder name")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _fold_folders(trainer_folder: Path, folds: list[str] | None) -> list[Path]:
    if folds is None:
        found = sorted(p for p in trainer_folder.iterdir() if p.is_dir() and _FOLD_FOLDER.match(p.name))
        if not found:
            raise LesiongenError(f"{trainer_folder}: no fold_X folders to export")
        return found
    chosen = []
    for fold in folds:
        name = fold if str(fold).startswith("fold_") else f"fold_{fold}"
        if not _FOLD_FOLDER.match(name):
            raise LesiongenError(f"fold must be a number or 'all', got '{fold}'")
        folder = trainer_folder / name
        if not folder.is_dir():
            raise LesiongenError(f"{folder}: requested fold not found")
        if folder not in chosen:
            chosen.append(folder)
    return chosen


def _files_to_export(dataset_folder: Path, trainers: list[str] | None, folds: list[str] | None,
                     include_validation: bool) -> list[Path]:
    files: list[Path] = []
    for trainer_folder in _trainer_folders(dataset_folder, trainers):
        for name in (PLANS_JSON, DATASET_JSON):
            if not _is_plain_file(trainer_folder / name):
                raise LesiongenError(f"{trainer_folder / name}: missing; a model folder needs it (for results of "
                                     "an older lesiongen, copy the dataset's preprocessed dataset.json there)")
            files.append(trainer_folder / name)
        if _is_plain_file(trainer_folder / POSTPROCESSING_JSON):  # checked against the folds' checkpoints on use
            files.append(trainer_folder / POSTPROCESSING_JSON)
        for fold_folder in _fold_folders(trainer_folder, folds):
            if not _is_plain_file(fold_folder / FINAL):
                raise LesiongenError(f"{fold_folder / FINAL}: final checkpoint missing (training not finished?); "
                                     f"leave this fold out with -f / -tr")
            files += [fold_folder / name for name in FOLD_FILES if _is_plain_file(fold_folder / name)]
            validation = fold_folder / VALIDATION
            if include_validation and validation.is_dir() and not validation.is_symlink():
                files += _plain_files_below(validation)
    return files


def export_model_to_zip(dataset_name: str, output_zip: Path, trainers: list[str] | None = None,
                        folds: list[str] | None = None, include_validation: bool = False) -> list[str]:
    """Write ``output_zip`` with the dataset's trained models; returns the archive's member names in order.

    ``dataset_name`` is a folder name below the results root (an ID works too). ``trainers`` are trainer folder
    names (``diffmask`` or ``diffmask__lesiongenPlans``; default all), ``folds`` fold names (``0``, ``all``;
    default every ``fold_X`` found). ``checkpoint_latest.pt`` is never exported; ``validation/`` only on request.
    """
    root = default_results_root()
    dataset_folder = resolve_results_dataset(dataset_name, root)
    files = _files_to_export(dataset_folder, [str(t) for t in trainers] if trainers else None,
                             [str(f) for f in folds] if folds else None, include_validation)
    output_zip = Path(output_zip)
    entries = []
    names = []
    with atomic_path(output_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for path in files:
                name = path.relative_to(root).as_posix()
                info = zipfile.ZipInfo.from_file(path, name)
                info.compress_type = zipfile.ZIP_DEFLATED
                digest = hashlib.sha256()
                size = 0
                with path.open("rb") as source, \
                        archive.open(info, "w", force_zip64=path.stat().st_size > 1024**3) as target:
                    # hash exactly the bytes that go into the archive
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        target.write(chunk)
                entries.append({"path": name, "sha256": digest.hexdigest(), "size": size})
                names.append(name)
            manifest = {"format": MANIFEST_FORMAT, "lesiongen_version": lesiongen.__version__,
                        "dataset": dataset_folder.name, "members": entries}
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            names.append(MANIFEST)
    logger.debug("exported %d files of %s to %s", len(entries), dataset_folder.name, output_zip)
    return names


# ----------------------------------------------------------------------------------------------------- install
def _refuse(zip_path: Path, message: str) -> LesiongenError:
    return LesiongenError(f"{zip_path}: {message}; nothing was installed")


def _check_name(zip_path: Path, name: str) -> tuple[str, ...]:
    """The member's path components, or an error when the name could escape or is malformed."""
    shown = repr(name)
    if not name or "\x00" in name:
        raise _refuse(zip_path, f"member {shown} has an empty or invalid name")
    if "\\" in name:
        raise _refuse(zip_path, f"member {shown} uses backslashes in its path")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(zip_path, f"member {shown} has an absolute path")
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refuse(zip_path, f"member {shown} has an unsafe path ('..', '.' or empty components)")
    return tuple(parts)


def _check_type(zip_path: Path, info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise _refuse(zip_path, f"member {info.filename!r} is encrypted")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == 0:  # no Unix type recorded (e.g. written on Windows): only the name says what it is
        return
    if info.is_dir():
        if kind != stat.S_IFDIR:
            raise _refuse(zip_path, f"member {info.filename!r} is not a regular directory")
    elif kind != stat.S_IFREG:
        what = "a symbolic link" if kind == stat.S_IFLNK else "a special file"
        raise _refuse(zip_path, f"member {info.filename!r} is {what}; only regular files are allowed")


def _read_manifest(zip_path: Path, archive: zipfile.ZipFile) -> dict:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise _refuse(zip_path, f"no {MANIFEST} manifest; not a lesiongen model archive") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise _refuse(zip_path, f"{MANIFEST} is implausibly large ({info.file_size} bytes)")
    try:
        manifest = json.loads(archive.read(info).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
        raise _refuse(zip_path, f"{MANIFEST} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise _refuse(zip_path, f"{MANIFEST} is not a lesiongen model manifest (format {MANIFEST_FORMAT} expected)")
    members = manifest.get("members")
    if not isinstance(manifest.get("dataset"), str) or not isinstance(members, list):
        raise _refuse(zip_path, f"{MANIFEST} lacks 'dataset' or 'members'")
    for entry in members:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                and isinstance(entry.get("size"), int) and entry["size"] >= 0):
            raise _refuse(zip_path, f"{MANIFEST} has a malformed member entry ({str(entry)[:80]})")
    return manifest


def _check_size(zip_path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a member that is too large, or compressed so well that it can only be a bomb, before unpacking."""
    if info.file_size > MAX_MEMBER_BYTES:
        raise _refuse(zip_path, f"member {info.filename!r} would unpack to {info.file_size / 1e9:.1f} GB (more than "
                                f"{MAX_MEMBER_BYTES / 1e9:g} GB per file); refusing a possible zip bomb")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
        raise _refuse(zip_path, f"member {info.filename!r} is compressed {ratio:.0f}:1 (more than "
                                f"{MAX_COMPRESSION_RATIO}:1); refusing a possible zip bomb")


def _validate_archive(zip_path: Path, archive: zipfile.ZipFile,
                      max_total_bytes: int | None = None) -> tuple[str, dict[str, dict], list[zipfile.ZipInfo]]:
    """Everything that can be checked without unpacking; returns the dataset, manifest entries and file members.

    ``max_total_bytes`` caps what the archive may unpack to (default ``MAX_TOTAL_BYTES``).
    """
    cap = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(zip_path, f"too many members ({len(infos)})")
    seen: set[str] = set()
    files: list[zipfile.ZipInfo] = []
    dataset: str | None = None
    total = 0
    for info in infos:
        parts = _check_name(zip_path, info.filename)
        _check_type(zip_path, info)
        key = "/".join(parts).lower()  # case-insensitive file systems would merge these
        if key in seen:
            raise _refuse(zip_path, f"member {info.filename!r} appears twice")
        seen.add(key)
        _check_size(zip_path, info)
        total += info.file_size
        if info.filename == MANIFEST:
            continue
        if not _DATASET_FOLDER.match(parts[0]):
            raise _refuse(zip_path, f"member {info.filename!r} is outside a DatasetXXX_Name/ top folder")
        if dataset is None:
            dataset = parts[0]
        elif parts[0] != dataset:
            raise _refuse(zip_path, f"member {info.filename!r} is outside the single top folder {dataset}/")
        if info.is_dir():
            continue
        if len(parts) < 3 or not _TRAINER_FOLDER.match(parts[1]):
            raise _refuse(zip_path, f"member {info.filename!r} is not inside a trainer folder "
                                    f"({dataset}/TRAINER__PLANS/...)")
        files.append(info)
    if total > cap:
        raise _refuse(zip_path, f"members would unpack to {total / 1e9:.1f} GB (more than {cap / 1e9:g} GB); "
                                "refusing a possible zip bomb (a larger limit: --max_size GB)")
    if not files or dataset is None:
        raise _refuse(zip_path, "archive holds no model files")
    # a file whose name is also used as a folder by another member cannot be unpacked
    folders = {"/".join(info.filename.split("/")[:i]).lower()
               for info in files for i in range(1, info.filename.count("/") + 1)}
    for info in files:
        if info.filename.lower() in folders:
            raise _refuse(zip_path, f"member {info.filename!r} is both a file and a folder")

    manifest = _read_manifest(zip_path, archive)
    if manifest["dataset"] != dataset:
        raise _refuse(zip_path, f"{MANIFEST} names dataset {manifest['dataset']!r} but the members are in {dataset}/")
    entries = {entry["path"]: entry for entry in manifest["members"]}
    if len(entries) != len(manifest["members"]):
        raise _refuse(zip_path, f"{MANIFEST} lists a member twice")
    names = {info.filename for info in files}
    for name in sorted(names - entries.keys()):
        raise _refuse(zip_path, f"member {name!r} is not listed in {MANIFEST}")
    for name in sorted(entries.keys() - names):
        raise _refuse(zip_path, f"{MANIFEST} lists {name!r} but the archive lacks it")
    for info in files:
        if info.file_size != entries[info.filename]["size"]:
            raise _refuse(zip_path, f"member {info.filename!r} is {info.file_size} bytes but {MANIFEST} says "
                                    f"{entries[info.filename]['size']}")
    # every trainer folder needs its plans, every fold its final checkpoint
    trainers = {info.filename.split("/")[1] for info in files}
    for trainer in sorted(trainers):
        if f"{dataset}/{trainer}/{PLANS_JSON}" not in names:
            raise _refuse(zip_path, f"{dataset}/{trainer}/{PLANS_JSON} missing from the archive")
    fold_folders = {"/".join(info.filename.split("/")[:3]) for info in files
                    if info.filename.count("/") >= 3 and _FOLD_FOLDER.match(info.filename.split("/")[2])}
    for fold in sorted(fold_folders):
        if f"{fold}/{FINAL}" not in names:
            raise _refuse(zip_path, f"{fold}/{FINAL} missing from the archive")
    version = manifest.get("lesiongen_version")
    if version != lesiongen.__version__:
        logger.info("%s was exported by lesiongen %s (this is %s)", zip_path, version, lesiongen.__version__)
    return dataset, entries, files


def _extract(zip_path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: dict, folder: Path) -> Path:
    target = folder.joinpath(*info.filename.split("/"))
    if not target.resolve().is_relative_to(folder.resolve()):  # belt and braces after the name checks
        raise _refuse(zip_path, f"member {info.filename!r} would unpack outside the target folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    declared = min(entry["size"], info.file_size)  # a lying header must not write more than it declared
    try:
        with archive.open(info) as source, open(target, "xb") as out:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if size > declared:
                    raise _refuse(zip_path, f"member {info.filename!r} unpacks to more than its declared size "
                                            f"({declared} bytes)")
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise _refuse(zip_path, f"member {info.filename!r} cannot be unpacked ({type(exc).__name__}: {exc})") from None
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise _refuse(zip_path, f"member {info.filename!r} does not match its sha256 in {MANIFEST} "
                                f"(corrupted or altered)")
    return target


def _check_checkpoint(zip_path: Path, name: str, path: Path) -> None:
    try:
        load_checkpoint(path)  # weights_only: a pickle that would run code is refused, never executed
    except LesiongenError as exc:
        raise _refuse(zip_path, f"member {name!r}: {_one_line(str(exc), path)}") from None


def _one_line(problem: str, path: Path) -> str:
    """torch's weights-only refusal spans many lines; keep what matters, on one line, without the staging path."""
    problem = re.sub(r"\x1b\[[0-9;]*m", "", problem).replace(f"{path}: ", "")
    if "Weights only load failed" in problem:
        found = re.search(r"Unsupported (?:global|operand): (?:GLOBAL )?[^\s]+", problem)
        detail = f" ({found.group(0)})" if found else ""
        return f"holds pickled Python objects that weights-only loading refuses{detail}; it was not loaded"
    problem = " ".join(problem.split())
    return problem if len(problem) <= 300 else problem[:297] + "..."


def install_model_from_zip(zip_path: Path, results_root: Path | None = None, overwrite: bool = False,
                           max_total_bytes: int | None = None) -> list[Path]:
    """Install an archive made by :func:`export_model_to_zip`; returns the installed trainer folders.

    Nothing is written unless the whole archive passes: safe member names and types, one ``DatasetXXX_Name/`` top
    folder, a manifest whose sha256 sums match, a plausible size (at most ``max_total_bytes`` in all, default
    ``MAX_TOTAL_BYTES``; per-member and compression-ratio caps), and ``weights_only``-loadable checkpoints.
    Existing trainer folders are replaced only with ``overwrite``.
    """
    zip_path = Path(zip_path)
    root = Path(results_root) if results_root is not None else default_results_root()
    if not zip_path.is_file():
        raise LesiongenError(f"{zip_path}: model archive not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LesiongenError(f"{zip_path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None
    with archive:
        dataset, entries, files = _validate_archive(zip_path, archive, max_total_bytes)
        trainers = sorted({info.filename.split("/")[1] for info in files})
        destination = root / dataset
        _check_destination(root, dataset, trainers, overwrite)
        total = sum(info.file_size for info in files)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if total > free:
            raise _refuse(zip_path, f"needs {total / 1e9:.2f} GB but {root} has only {free / 1e9:.2f} GB free")
        staging = Path(tempfile.mkdtemp(prefix=".lesiongen_install_", suffix=PARTIAL_SUFFIX, dir=root))
        try:
            for info in files:
                path = _extract(zip_path, archive, info, entries[info.filename], staging)
                if path.suffix == ".pt":  # every checkpoint, not just the final ones: all may be loaded later
                    _check_checkpoint(zip_path, info.filename, path)
            installed = _move_into_place(staging, dataset, destination, trainers, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.debug("installed %s from %s", ", ".join(str(p) for p in installed), zip_path)
    return installed


def _check_destination(root: Path, dataset: str, trainers: list[str], overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise LesiongenError(f"{root}: results root is not a folder")
    if root.is_dir():
        wanted = int(_DATASET_FOLDER.match(dataset).group(1))
        for other in root.iterdir():
            match = _DATASET_FOLDER.match(other.name)
            if match and int(match.group(1)) == wanted and other.name != dataset:
                raise LesiongenError(f"{other}: dataset ID {wanted:03d} is already used by another folder; the "
                                     f"archive holds {dataset} (rename one of them); nothing was installed")
    destination = root / dataset
    if destination.exists() and not destination.is_dir():
        raise LesiongenError(f"{destination}: exists and is not a folder; nothing was installed")
    for trainer in trainers:
        target = destination / trainer
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise LesiongenError(f"{target}: already exists; use --overwrite to replace it (nothing was installed)")
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise LesiongenError(f"{target}: exists and is not a plain folder; remove it by hand "
                                 f"(nothing was installed)")


def _move_into_place(staging: Path, dataset: str, destination: Path, trainers: list[str],
                     overwrite: bool) -> list[Path]:
    created = not destination.exists()
    destination.mkdir(exist_ok=True)
    backups = staging / ".replaced"
    backups.mkdir()
    installed = []
    moved: list[tuple[Path, Path | None]] = []  # (installed folder, backup of what it replaced)
    try:
        for trainer in trainers:
            target = destination / trainer
            backup = None
            if target.exists():
                if not overwrite:  # appeared since the check
                    raise LesiongenError(f"{target}: already exists; use --overwrite to replace it")
                backup = backups / trainer
                os.replace(target, backup)
            os.rename(staging / dataset / trainer, target)
            moved.append((target, backup))
            installed.append(target)
    except BaseException:
        # put back what was there, so a failed install leaves the results root as it was
        for target, backup in reversed(moved):
            shutil.rmtree(target, ignore_errors=True)
            if backup is not None:
                os.replace(backup, target)
        for trainer in trainers:
            if (backups / trainer).exists() and not (destination / trainer).exists():
                os.replace(backups / trainer, destination / trainer)
        if created and not any(destination.iterdir()):
            destination.rmdir()
        raise
    return installed
