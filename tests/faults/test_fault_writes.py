"""A full disk or a read-only folder ends in one line naming the file; nothing half-written survives, the previous
file stays as it was; leftovers of killed runs are cleaned by the next run."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _fault_workers import file_error_on_two
from _faults_common import leftovers, one_error_line, read_only, small_tmpfs  # noqa: F401
from lesiongen.cli.common import run_command
from lesiongen.inference.predict import InputCase, PredictOptions, run_cases
from lesiongen.models.checkpoint import load_checkpoint, save_checkpoint
from lesiongen.preprocessing.storage import save_array
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import atomic_path, remove_partial_files, write_json
from lesiongen.utilities.parallel import map_cases

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def _state(n: int) -> dict:
    return {"format": 2, "networks": {"net": {"weight": torch.arange(n, dtype=torch.float32)}}}


def _refuse_replace(monkeypatch, code: int) -> None:
    """Every rename onto a final name fails as the file system would."""
    def replace(src, dst):
        raise OSError(code, os.strerror(code), str(src))

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EDQUOT, "no space left on device"),
                                          (errno.EROFS, "read-only (or no permission)"),
                                          (errno.EACCES, "read-only (or no permission)")])
def test_write_failures_name_the_final_file_and_keep_the_old_one(tmp_path, monkeypatch, code, reason):
    target = tmp_path / "out" / "result.json"
    write_json(target, {"version": 1})
    before = target.read_bytes()
    _refuse_replace(monkeypatch, code)
    with pytest.raises(LesiongenError) as info:
        write_json(target, {"version": 2})
    assert str(info.value).startswith(f"{target}: {reason}") and "\n" not in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not leftovers(tmp_path)


def test_checkpoint_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "fold_0" / "checkpoint_latest.pt"
    save_checkpoint(_state(6), path)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk_save(obj, target):  # writes part of the file, then fails as torch does when the disk fills
        real_save(obj, target)
        with open(target, "r+b") as handle:
            handle.truncate(100)
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(LesiongenError) as info:
        save_checkpoint(_state(60), path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not leftovers(tmp_path)
    _refuse_replace(monkeypatch, errno.ENOSPC)
    with pytest.raises(LesiongenError, match="no space left on device"):
        save_checkpoint(_state(60), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not leftovers(tmp_path)
    assert load_checkpoint(path)["networks"]["net"]["weight"].numel() == 6


def test_real_full_file_system(tmp_path):
    """torch, blosc2 and plain writes each hit a real full tmpfs: one line each, the old files intact."""
    with small_tmpfs(tmp_path / "small", "256k") as folder:
        checkpoint, array, record = folder / "checkpoint_latest.pt", folder / "case.b2nd", folder / "case.json"
        save_checkpoint(_state(6), checkpoint)
        save_array(array, np.zeros((4, 4), np.float32))
        write_json(record, {"ok": True})
        before = {p: p.read_bytes() for p in (checkpoint, array, record)}
        noise = np.random.default_rng(0).random(200_000).astype(np.float32)  # 800 kB, incompressible
        for path, write in ((checkpoint, lambda: save_checkpoint({"w": torch.from_numpy(noise)}, checkpoint)),
                            (array, lambda: save_array(array, noise)),
                            (record, lambda: write_json(record, {"w": noise.tolist()}))):
            with pytest.raises(LesiongenError) as info:
                write()
            assert str(info.value) == f"{path}: no space left on device"
        assert {p: p.read_bytes() for p in before} == before
        assert not leftovers(folder)


def test_read_only_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    checkpoint = folder / "checkpoint_final.pt"
    save_checkpoint(_state(6), checkpoint)
    before = checkpoint.read_bytes()
    with read_only(folder):
        for path, write in ((checkpoint, lambda: save_checkpoint(_state(60), checkpoint)),
                            (folder / "case.b2nd", lambda: save_array(folder / "case.b2nd", np.zeros(3))),
                            (folder / "sub" / "a.json", lambda: write_json(folder / "sub" / "a.json", {}))):
            with pytest.raises(LesiongenError) as info:
                write()
            assert str(info.value) == f"{path}: read-only (or no permission)"
    assert checkpoint.read_bytes() == before and sorted(folder.iterdir()) == [checkpoint]


def test_an_unreadable_input_is_not_blamed_on_the_output(tmp_path, monkeypatch):
    """A permission error on a file the writer reads keeps naming that file (and stays an OSError)."""
    source = tmp_path / "input.json"

    def copy(*_):
        raise PermissionError(errno.EACCES, "Permission denied", str(source))

    monkeypatch.setattr(shutil, "copyfile", copy)
    with pytest.raises(PermissionError) as info:
        with atomic_path(tmp_path / "copy.json") as tmp:
            shutil.copyfile(source, tmp)
    assert info.value.filename == str(source)
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through untouched
        with atomic_path(tmp_path / "x.json"):
            raise RuntimeError("unrelated")


def _body_raising(exc: BaseException):
    def body(_args):
        raise exc

    return body


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.EROFS, "Read-only file system", "/data/out"), "/data/out: read-only (or no permission)"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.nii.gz"), "/data/x.nii.gz: no space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/locked"), "/data/locked: read-only (or no permission)"),
])
def test_run_command_prints_os_failures_as_one_line(exc, expected, capsys):
    assert run_command(_body_raising(exc), argparse.ArgumentParser(), []) == 1
    assert one_error_line(capsys.readouterr().err) == expected


def test_run_command_mkdir_in_a_read_only_folder(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        assert run_command(lambda _: (folder / "new").mkdir(), argparse.ArgumentParser(), []) == 1
    assert one_error_line(capsys.readouterr().err) == f"{folder / 'new'}: read-only (or no permission)"
    with pytest.raises(FileNotFoundError):  # other OS errors are bugs or set-up problems: not hidden
        run_command(lambda _: open(tmp_path / "missing" / "x"), argparse.ArgumentParser(), [])


def test_a_user_error_in_a_worker_reaches_the_parent_as_one_line():
    """The parent must get the worker's one-line message, not "a worker process died"."""
    with pytest.raises(LesiongenError) as info:
        map_cases(file_error_on_two, [1, 2, 3], 2, "checking", progress=False)
    assert str(info.value) == "/data/case_2.nii.gz: not a NIfTI file"


def _make_leftovers(folder: Path) -> dict[str, Path]:
    (folder / "sub").mkdir(parents=True)
    made = {
        "file": folder / "sub" / ".case.b2nd.0123abcd.partial.b2nd",
        "nifti": folder / ".x_0000.nii.gz.89abcdef.partial.nii.gz",
        "staging": folder / ".export.0badc0de.partial",
        "retired": folder / ".done.cafebabe.old",
        "orphan": folder / ".lost.deadbeef.old",  # killed between the two renames: the old folder is the valid one
        "kept_hidden": folder / ".hidden_config",
        "kept_partial_name": folder / "my.partial.notes.txt",
    }
    for key in ("file", "nifti", "kept_hidden", "kept_partial_name"):
        made[key].write_text(key)
    for key in ("staging", "retired", "orphan"):
        made[key].mkdir()
        (made[key] / "inside.txt").write_text(key)
    (folder / "done").mkdir()
    return made


def test_remove_partial_files_cleans_files_staging_folders_and_old_folders(tmp_path):
    made = _make_leftovers(tmp_path)
    assert remove_partial_files(tmp_path, targets=[tmp_path / "export"]) == 1  # only the leftovers of these
    assert not made["staging"].exists() and made["file"].exists()
    assert remove_partial_files(tmp_path) == 3
    assert not any(made[k].exists() for k in ("file", "nifti", "staging", "retired", "orphan"))
    assert made["kept_hidden"].exists() and made["kept_partial_name"].exists()
    assert (tmp_path / "lost" / "inside.txt").read_text() == "orphan"  # put back under its name
    assert (tmp_path / "done").is_dir() and not leftovers(tmp_path)


def test_prediction_output_leftovers_are_removed_when_a_run_starts(tmp_path):
    """Only this run's leftovers go: the parts of one prediction (--num_parts) may write into one folder at once."""
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "case_a.nii.gz").write_text("done")  # finished: skipped with resume, so nothing is read
    own = out / ".case_a.nii.gz.0123abcd.partial.nii.gz"
    other_part = out / ".case_b.nii.gz.89abcdef.partial.nii.gz"
    for path in (own, other_part):
        path.write_text("unfinished")
    case = InputCase("case_a", [tmp_path / "in" / "case_a_0000.nii.gz"], ".nii.gz")
    assert run_cases([case], out, PredictOptions(mode="seg", resume=True), 1, None) == {"done": 0, "skipped": 1}
    assert not own.exists() and other_part.exists()


def test_a_nifti_writer_that_truncates_silently_is_caught(tmp_path, monkeypatch):
    """ITK's NIfTI writer reports a full disk only on stderr and returns; the written file must be checked."""
    from lesiongen.io import images

    write = images._sitk_write

    def truncating(path, array, geometry):
        write(path, array, geometry)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(images, "_sitk_write", truncating)
    geometry = images.ImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (8, 9, 10))
    for ending in (".nii.gz", ".nii"):
        target = tmp_path / f"image{ending}"
        with pytest.raises(LesiongenError, match="could not be written completely"):
            images.write_image(target, np.random.default_rng(0).random((8, 9, 10)).astype(np.float32), geometry)
        assert not target.exists() and not list(tmp_path.iterdir())
