"""Zip bombs are refused from the zip directory before anything is unpacked: total size, member size, compression
ratio; a header that understates a member's size cannot make it write more than declared."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from _faults_common import one_error_line  # noqa: F401
from lesiongen.cli.model_sharing import main_install
from lesiongen.sharing import model_zip
from lesiongen.sharing.model_zip import MANIFEST, install_model_from_zip
from lesiongen.utilities.errors import LesiongenError

DATASET = "Dataset501_Test"
TRAINER = f"{DATASET}/spheremask__lesiongenPlans"
ZEROS = bytes(3 * 1024**2)  # 3 MiB of zeros deflate to about 3 kB: 1000:1


def _checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": 2, "networks": {"net": {"w": torch.ones(3)}}}, buffer)
    return buffer.getvalue()


def _entry(name: str, data: bytes, size: int | None = None) -> dict:
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data) if size is None else size}


def _archive(path: Path, extra: dict[str, bytes] | None = None, understate: dict[str, int] | None = None) -> Path:
    """A valid model archive plus ``extra`` members (deflated); ``understate`` makes the zip directory declare
    fewer bytes for a member than it holds (the manifest agrees with the lie, so only unpacking can tell)."""
    files = {f"{TRAINER}/plans.json": b"{}", f"{TRAINER}/fold_0/checkpoint_final.pt": _checkpoint(), **(extra or {})}
    understate = understate or {}
    entries = [_entry(n, d[: understate[n]] if n in understate else d) for n, d in files.items()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
            if name in understate:
                archive.getinfo(name).file_size = understate[name]  # goes into the central directory as is
        archive.writestr(MANIFEST, json.dumps({"format": 1, "lesiongen_version": "0", "dataset": DATASET,
                                               "members": entries}))
    return path


def _install_fails(archive: Path, capsys, *options: str) -> str:
    assert main_install([str(archive), *options]) == 1
    return one_error_line(capsys.readouterr().err)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    monkeypatch.setenv("lesiongen_results", str(root))
    return root


def test_default_caps():
    assert model_zip.MAX_TOTAL_BYTES == 4 * 1000**3 and model_zip.MAX_MEMBER_BYTES == 2 * 1000**3
    assert model_zip.MAX_COMPRESSION_RATIO == 200 and model_zip.RATIO_MIN_BYTES == 1024**2


def test_total_size_cap_and_max_size_option(results, tmp_path, monkeypatch, capsys):
    archive = _archive(tmp_path / "model.zip")
    monkeypatch.setattr(model_zip, "MAX_TOTAL_BYTES", 100)
    line = _install_fails(archive, capsys)
    assert line.startswith(f"{archive}: ") and "zip bomb" in line and "--max_size" in line
    assert not results.exists()
    line = _install_fails(archive, capsys, "--max_size", "0.0000001")  # 100 bytes
    assert "more than 1e-07 GB" in line
    assert main_install([str(archive), "--max_size", "0.01"]) == 0  # the option raises the cap
    assert (results / TRAINER / "fold_0" / "checkpoint_final.pt").is_file()


def test_member_size_cap(results, tmp_path, monkeypatch, capsys):
    archive = _archive(tmp_path / "model.zip")
    monkeypatch.setattr(model_zip, "MAX_MEMBER_BYTES", 200)
    line = _install_fails(archive, capsys)
    assert f"member '{TRAINER}/fold_0/checkpoint_final.pt' would unpack to" in line and "per file" in line
    assert not results.exists()


def test_compression_ratio_cap(results, tmp_path, capsys):
    archive = _archive(tmp_path / "zeros.zip", {f"{TRAINER}/fold_0/summary.json": ZEROS})
    line = _install_fails(archive, capsys)
    assert f"member '{TRAINER}/fold_0/summary.json' is compressed" in line and "more than 200:1" in line
    assert not results.exists()
    small = _archive(tmp_path / "small.zip", {f"{TRAINER}/fold_0/summary.json": bytes(1024**2)})
    assert install_model_from_zip(small)  # at most 1 MiB: may compress as well as it likes


def test_a_header_that_understates_a_member_is_refused_while_unpacking(results, tmp_path):
    member = f"{TRAINER}/fold_0/summary.json"
    archive = _archive(tmp_path / "liar.zip", {member: ZEROS}, understate={member: 1000})
    assert zipfile.ZipFile(archive).getinfo(member).file_size == 1000  # passes every check of the directory
    with pytest.raises(LesiongenError) as info:
        install_model_from_zip(archive)
    assert str(info.value).startswith(f"{archive}: member '{member}' ") and "nothing was installed" in str(info.value)
    assert not (results / DATASET).exists() and not any(p.suffix == ".json" for p in results.rglob("*"))
