"""Preprocessed arrays carry their size and sha256: a damaged file is redone on a rerun and refused on load, in one
line naming it; a full disk or read-only folder during preprocessing ends in one line too."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from _faults_common import (  # noqa: F401
    DATASET_ID, leftovers, one_error_line, preprocessed_copy, read_only,
)
from lesiongen.cli.plan_and_preprocess import main_preprocess
from lesiongen.preprocessing.lesion_patches import load_lesion_patches
from lesiongen.preprocessing.storage import CHECKSUMS, file_record, first_mismatch, load_array
from lesiongen.training.seg_data import SegCase
from lesiongen.utilities.errors import LesiongenError

MISMATCH = "size/checksum does not match its record (corrupt or changed since preprocessing)"


def _preprocess(capsys, *extra: str) -> tuple[int, str]:
    code = main_preprocess(["-d", DATASET_ID, "-np", "1", *extra])
    return code, capsys.readouterr().err


def _lesion_cases(data: Path) -> list[str]:
    return sorted(p.stem for p in (data / "training").glob("*.json"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _all_sidecars_verify(data: Path) -> None:
    sidecars = [*data.glob("training/*.json"), *data.glob("healthy/*.json"), *data.glob("lesion_patches/*.json")]
    assert len(sidecars) >= 6
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        assert record[CHECKSUMS], sidecar
        assert first_mismatch(sidecar.parent, record[CHECKSUMS]) is None, sidecar
        if "files" in record:
            assert set(record["files"]) <= record[CHECKSUMS].keys()


def test_every_written_file_is_recorded(preprocessed_copy):
    data = preprocessed_copy["data"]
    _all_sidecars_verify(data)
    case = _lesion_cases(data)[0]
    record = json.loads((data / "training" / f"{case}.json").read_text())
    for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}_tissue.b2nd", f"{case}_locations.npz",
                 f"../lesion_patches/{case}_images.b2nd", f"../lesion_patches/{case}_patches.json"):
        assert name in record[CHECKSUMS]
        assert record[CHECKSUMS][name]["size"] == os.path.getsize(data / "training" / name)


def test_damaged_and_unrecorded_cases_are_redone_on_a_rerun(preprocessed_copy, capsys):
    data = preprocessed_copy["data"]
    first, second, third = _lesion_cases(data)[:3]
    truncated = data / "training" / f"{first}.b2nd"
    flipped = data / "lesion_patches" / f"{second}_masks.b2nd"
    _truncate(truncated)
    _flip_a_bit(flipped)
    old = data / "training" / f"{third}.json"  # as an older lesiongen wrote it: no checksums
    record = json.loads(old.read_text())
    del record[CHECKSUMS]
    old.write_text(json.dumps(record))

    code, err = _preprocess(capsys)
    assert code == 0, err
    assert f"{truncated}: {MISMATCH}; preprocessing the case again" in err
    assert f"{flipped}: {MISMATCH}; preprocessing the case again" in err
    assert f"{old}: no checksums recorded" in err
    assert "preprocessed 3 case(s), skipped 3 up-to-date" in err
    _all_sidecars_verify(data)
    code, err = _preprocess(capsys)
    assert code == 0 and "preprocessed 0 case(s), skipped 6" in err


def test_damaged_files_are_refused_when_training_loads_them(preprocessed_copy):
    data = preprocessed_copy["data"]
    first, second = _lesion_cases(data)[:2]
    images = data / "training" / f"{first}.b2nd"
    _flip_a_bit(images)
    with pytest.raises(LesiongenError) as info:
        SegCase(first, data / "training" / first).arrays()
    assert str(info.value) == f"{images}: {MISMATCH}; rerun lesiongen_preprocess -d {DATASET_ID}"

    masks = data / "lesion_patches" / f"{second}_masks.b2nd"
    _truncate(masks)
    with pytest.raises(LesiongenError) as info:
        load_lesion_patches(data / "lesion_patches", [second])
    assert str(info.value) == f"{masks}: {MISMATCH}; rerun lesiongen_preprocess -d {DATASET_ID}"
    with pytest.raises(LesiongenError) as info:  # read directly, blosc2's own error becomes one line
        load_array(masks)
    assert str(info.value).startswith(f"{masks}: not a readable blosc2 array") and "\n" not in str(info.value)


def test_cases_are_verified_once_and_old_records_accepted(preprocessed_copy, monkeypatch):
    data = preprocessed_copy["data"]
    first, second = _lesion_cases(data)[:2]
    case = SegCase(first, data / "training" / first)
    case.arrays()
    hashed = []
    with monkeypatch.context() as patch:
        patch.setattr("lesiongen.preprocessing.storage.file_record", lambda p: hashed.append(p) or {})
        for _ in range(3):
            case.arrays()  # verified already in this process: no hashing per batch
    assert hashed == []

    sidecar = data / "training" / f"{second}.json"
    record = json.loads(sidecar.read_text())
    del record[CHECKSUMS]
    sidecar.write_text(json.dumps(record))
    images, seg = SegCase(second, data / "training" / second).arrays()  # older preprocessing: accepted
    assert images.shape[1:] == seg.shape


def test_full_disk_while_preprocessing(preprocessed_copy, monkeypatch, capsys):
    data = preprocessed_copy["data"]
    case = _lesion_cases(data)[1]
    (data / "training" / f"{case}.json").unlink()  # this case is redone
    before = (data / "training" / f"{case}.b2nd").read_bytes()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".b2nd"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    with monkeypatch.context() as patch:  # (monkeypatch itself holds this test's folders)
        patch.setattr(os, "replace", replace)
        code, err = _preprocess(capsys)
    assert code == 1
    assert one_error_line(err) == f"{data / 'training' / case}.b2nd: no space left on device"
    assert (data / "training" / f"{case}.b2nd").read_bytes() == before
    assert not (data / "training" / f"{case}.json").exists()  # unfinished: redone by the next run
    assert not leftovers(preprocessed_copy["preprocessed"])
    code, err = _preprocess(capsys)
    assert code == 0 and "preprocessed 1 case(s)" in err


def test_read_only_folder_while_preprocessing(preprocessed_copy, capsys):
    data = preprocessed_copy["data"]
    case = _lesion_cases(data)[0]
    (data / "training" / f"{case}.json").unlink()
    with read_only(data / "training"):
        code, err = _preprocess(capsys)
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"{data / 'training' / case}") and line.endswith(": read-only (or no permission)")
    assert not leftovers(preprocessed_copy["preprocessed"])


def test_a_record_of_a_file_read_in_several_chunks_holds_its_whole_size_and_hash(tmp_path):
    data = os.urandom(5 * 2**19 + 3)  # 2.5 MiB and 3 bytes: three chunks, the last short
    (tmp_path / "big.bin").write_bytes(data)
    assert file_record(tmp_path / "big.bin") == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
