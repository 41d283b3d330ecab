"""Model sharing: export trained models to a zip and install them safely elsewhere (fake results tree, tiny files)."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from lesiongen.cli.model_sharing import main_export, main_install
from lesiongen.sharing import model_zip as model_sharing
from lesiongen.sharing.model_zip import MANIFEST, export_model_to_zip, install_model_from_zip
from lesiongen.utilities.errors import LesiongenError

DATASET = "Dataset501_Test"
PLANS = "lesiongenPlans"


def _touch(path: str) -> None:  # what a malicious pickle would run on load
    Path(path).write_text("pwned")


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return _touch, (self.marker,)


def _checkpoint_bytes(tmp: Path, trainer: str, fold: str, obj=None) -> bytes:
    state = {"format": 1, "trainer": trainer, "fold": fold, "final": True, "step": 3,
             "networks": {"net": {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}}}
    if obj is not None:
        state["extra"] = obj
    path = tmp / f".ckpt_{trainer}_{fold}.pt"
    torch.save(state, path)
    data = path.read_bytes()
    path.unlink()
    return data


def _make_tree(root: Path, scratch: Path) -> Path:
    dataset = root / DATASET
    for trainer, folds in (("spheremask", ("0", "1")), ("diffmask", ("0",))):
        folder = dataset / f"{trainer}__{PLANS}"
        folder.mkdir(parents=True)
        (folder / "plans.json").write_text(json.dumps({"trainer": trainer}))
        (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}}))
        for fold in folds:
            fold_folder = folder / f"fold_{fold}"
            fold_folder.mkdir()
            (fold_folder / "checkpoint_final.pt").write_bytes(_checkpoint_bytes(scratch, trainer, fold))
            (fold_folder / "checkpoint_latest.pt").write_bytes(b"latest, never shared")
            (fold_folder / "training_summary.json").write_text('{"steps": 3}')
            (fold_folder / "sphere_priors.json").write_text('{"1": {}}')
            (fold_folder / "progress.png").write_bytes(b"\x89PNG fake")
            (fold_folder / "training_log.txt").write_text("log")
            (fold_folder / "validation").mkdir()
            (fold_folder / "validation" / "case_000.json").write_text("{}")
    (dataset / "inpainting_evaluation").mkdir()  # not a trainer folder: never exported
    return dataset


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    monkeypatch.setenv("lesiongen_results", str(root))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _make_tree(root, scratch)
    return root


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _make_zip(path: Path, files: dict[str, bytes], *, manifest: dict | None = None,
              infos: dict[str, zipfile.ZipInfo] | None = None) -> Path:
    """A hand-made archive with a correct manifest unless one is given."""
    if manifest is None:
        manifest = {"format": 1, "lesiongen_version": "0.1.0", "dataset": DATASET,
                    "members": [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                                for n, d in files.items()]}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr((infos or {}).get(name, name), data)
        archive.writestr(MANIFEST, json.dumps(manifest))
    return path


def _valid_files(scratch: Path) -> dict[str, bytes]:
    base = f"{DATASET}/spheremask__{PLANS}"
    return {f"{base}/plans.json": b"{}", f"{base}/fold_0/checkpoint_final.pt": _checkpoint_bytes(scratch, "s", "0")}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_round_trip_is_bit_for_bit(results, tmp_path, monkeypatch):
    archive = tmp_path / "model.zip"
    names = export_model_to_zip(DATASET, archive)
    assert names[-1] == MANIFEST
    assert f"{DATASET}/diffmask__{PLANS}/fold_0/checkpoint_final.pt" in names
    assert f"{DATASET}/spheremask__{PLANS}/plans.json" in names
    assert not any(n.endswith("checkpoint_latest.pt") or "/validation/" in n or n.endswith("training_log.txt")
                   or "inpainting_evaluation" in n for n in names)
    manifest = json.loads(zipfile.ZipFile(archive).read(MANIFEST))
    assert manifest["dataset"] == DATASET and manifest["lesiongen_version"]
    assert [m["path"] for m in manifest["members"]] == names[:-1]

    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("lesiongen_results", str(fresh))
    installed = install_model_from_zip(archive)
    assert installed == [fresh / DATASET / f"diffmask__{PLANS}", fresh / DATASET / f"spheremask__{PLANS}"]
    for name in names[:-1]:
        assert (fresh / name).read_bytes() == (results / name).read_bytes(), name
    assert sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()) == sorted(names[:-1])
    assert not any(p.name.startswith(".") for p in fresh.iterdir())  # the staging folder is gone


def test_export_cli_selection_and_missing_final(results, tmp_path, capsys):
    archive = tmp_path / "sel.zip"
    assert main_export(["-d", "501", "-o", str(archive), "-tr", "spheremask", "-f", "1",
                        "--include_validation"]) == 0
    names = zipfile.ZipFile(archive).namelist()
    assert all(n == MANIFEST or n.startswith(f"{DATASET}/spheremask__{PLANS}/") for n in names)
    assert f"{DATASET}/spheremask__{PLANS}/fold_1/validation/case_000.json" in names
    assert not any("fold_0" in n for n in names)

    (results / DATASET / f"spheremask__{PLANS}" / "fold_1" / "checkpoint_final.pt").unlink()
    capsys.readouterr()
    assert main_export(["-d", DATASET, "-o", str(tmp_path / "bad.zip")]) == 1
    err = _one_line_error(capsys)
    assert "fold_1/checkpoint_final.pt" in err
    assert not (tmp_path / "bad.zip").exists()
    # a fold that was not requested does not matter
    assert main_export(["-d", "501", "-o", str(tmp_path / "ok.zip"), "-f", "0"]) == 0


@pytest.mark.parametrize("bad_name", ["../evil", "/tmp/evil_abs"])
def test_unsafe_member_paths_refused(results, tmp_path, capsys, bad_name):
    files = {**_valid_files(tmp_path / "scratch"), bad_name: b"evil"}
    archive = _make_zip(tmp_path / "evil.zip", files)
    before = _snapshot(tmp_path)
    assert main_install([str(archive)]) == 1
    err = _one_line_error(capsys)
    assert bad_name in err
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/evil_abs").exists()


def test_symlink_member_and_stray_top_folder_refused(results, tmp_path):
    scratch = tmp_path / "scratch"
    link = zipfile.ZipInfo(f"{DATASET}/spheremask__{PLANS}/fold_0/summary.json")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    files = {**_valid_files(scratch), link.filename: b"/etc/passwd"}
    with pytest.raises(LesiongenError, match="symbolic link"):
        install_model_from_zip(_make_zip(tmp_path / "link.zip", files, infos={link.filename: link}))
    files = {**_valid_files(scratch), "Dataset502_Other/x__y/plans.json": b"{}"}
    with pytest.raises(LesiongenError, match="single top folder"):
        install_model_from_zip(_make_zip(tmp_path / "two.zip", files))
    with pytest.raises(LesiongenError, match="not a lesiongen model manifest"):
        install_model_from_zip(_make_zip(tmp_path / "list.zip", _valid_files(scratch), manifest=[]), tmp_path / "r")
    files = _valid_files(scratch)
    with zipfile.ZipFile(tmp_path / "nomanifest.zip", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(LesiongenError, match="no lesiongen_model.json manifest"):
        install_model_from_zip(tmp_path / "nomanifest.zip")


def test_zip_bomb_guard(results, tmp_path, monkeypatch):
    monkeypatch.setattr(model_sharing, "MAX_TOTAL_BYTES", 100)
    archive = tmp_path / "m.zip"
    export_model_to_zip(DATASET, archive)
    with pytest.raises(LesiongenError, match="zip bomb"):
        install_model_from_zip(archive, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_sha_mismatch_refused(results, tmp_path):
    files = _valid_files(tmp_path / "scratch")
    manifest = {"format": 1, "lesiongen_version": "0.1.0", "dataset": DATASET,
                "members": [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                            for n, d in files.items()]}
    plans = f"{DATASET}/spheremask__{PLANS}/plans.json"
    files[plans] = b"[]"  # same size, different bytes
    archive = _make_zip(tmp_path / "tampered.zip", files, manifest=manifest)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(LesiongenError, match="sha256") as info:
        install_model_from_zip(archive, fresh)
    assert plans in str(info.value) and "\n" not in str(info.value)
    assert _snapshot(fresh) == []


def test_pickle_checkpoint_refused_without_running_it(results, tmp_path):
    marker = tmp_path / "pwned.txt"
    files = _valid_files(tmp_path / "scratch")
    member = f"{DATASET}/spheremask__{PLANS}/fold_0/checkpoint_final.pt"
    files[member] = _checkpoint_bytes(tmp_path / "scratch", "s", "0", obj=Payload(str(marker)))
    archive = _make_zip(tmp_path / "pickle.zip", files)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(LesiongenError) as info:
        install_model_from_zip(archive, fresh)
    assert member in str(info.value) and "\n" not in str(info.value)
    assert "weights-only" in str(info.value) and "_touch" in str(info.value)
    assert not marker.exists()
    assert _snapshot(fresh) == []


def test_existing_folder_needs_overwrite(results, tmp_path, capsys):
    archive = tmp_path / "model.zip"
    export_model_to_zip(DATASET, archive, trainers=["diffmask"])
    target = results / DATASET / f"diffmask__{PLANS}"
    original = (target / "fold_0" / "checkpoint_final.pt").read_bytes()
    (target / "local_note.txt").write_text("mine")
    assert main_install([str(archive)]) == 1
    assert str(target) in _one_line_error(capsys)
    assert (target / "local_note.txt").exists()

    assert main_install([str(archive), "--overwrite"]) == 0
    assert not (target / "local_note.txt").exists()
    assert (target / "fold_0" / "checkpoint_final.pt").read_bytes() == original
    assert (results / DATASET / f"spheremask__{PLANS}" / "fold_0" / "checkpoint_latest.pt").exists()  # untouched


def test_cli_missing_zip(results, tmp_path, capsys):
    assert main_install([str(tmp_path / "nope.zip")]) == 1
    assert "nope.zip" in _one_line_error(capsys)
