"""lesiongen_export_nnunet: real + synthetic cases as an nnU-Net v2 raw dataset, and its structural check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY, TINY_NAME, count_inpaint_calls
from lesiongen.cli import export_nnunet as export_cli
from lesiongen.cli import train as train_cli
from lesiongen.sharing.export_nnunet import check_nnunet_layout
from lesiongen.io.images import read_image
from lesiongen.utilities.provenance import sha256_file

OUT_NAME = "Dataset601_DemoMSSynth"


def export(out_root, *args) -> int:
    return export_cli.main(["-d", str(TINY.dataset_id), "-o", str(out_root), "-device", "cpu", *map(str, args)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def exported(tiny_preprocessed, tmp_path_factory):
    """Before training: missing models are refused; then train fold 0 quickly and export 2 sphere cases."""
    out_root = tmp_path_factory.mktemp("nnunet_raw")
    missing_root = tmp_path_factory.mktemp("nnunet_missing")
    assert export(missing_root, "--synthetic", "sphere", "--n", "1", "--id", "601", "-f", "0") == 1
    assert not any(missing_root.iterdir())  # nothing written, not even a staging folder
    for trainer in ("spheremask", "inpaint"):
        assert train_cli.main([str(TINY.dataset_id), trainer, "0", "--steps", "2", "-device", "cpu"]) == 0
    assert export(out_root, "--synthetic", "sphere", "--n", "2", "--id", "601", "-f", "0", "--seed", "3") == 0
    return tiny_preprocessed, out_root


def test_missing_models_name_the_command(tiny_preprocessed, tmp_path, capsys):
    # fold 1 is never trained in this module
    assert export(tmp_path, "--synthetic", "sphere", "--n", "1", "--id", "601", "-f", "1") == 1
    line = one_line_error(capsys)
    assert "lesiongen_train" in line and "fold 1" in line
    assert not any(tmp_path.iterdir())


def test_export_is_a_valid_nnunet_dataset(exported):
    folders, out_root = exported
    out = out_root / OUT_NAME
    assert sorted(p.name for p in out_root.iterdir()) == [OUT_NAME]  # no staging folder left
    assert check_nnunet_layout(out) == []
    meta = json.loads((out / "dataset.json").read_text())
    source = folders["raw"] / TINY_NAME
    source_meta = json.loads((source / "dataset.json").read_text())
    assert meta["numTraining"] == TINY.n_lesion_cases + 2
    assert meta["labels"] == source_meta["labels"] and meta["channel_names"] == source_meta["channel_names"]
    assert meta["file_ending"] == ".nii.gz" and meta["overwrite_image_reader_writer"] == "SimpleITKIO"
    record = meta["lesiongen"]
    assert (record["source_dataset"], record["strategy"], record["fold"], record["n"], record["seed"]) == \
        (TINY_NAME, "sphere", "0", 2, 3)

    # real cases: byte copies
    real = sorted(p.name for p in (source / "imagesTr").iterdir())
    for name in real:
        assert (out / "imagesTr" / name).read_bytes() == (source / "imagesTr" / name).read_bytes()
    for path in (source / "labelsTr").iterdir():
        assert (out / "labelsTr" / path.name).read_bytes() == path.read_bytes()

    # synthetic cases: the healthy scans' grids, uint8 labels
    for i in range(2):
        healthy_image, healthy_geo = read_image(source / "imagesHealthy" / f"healthy_{i:03d}_0000.nii.gz")
        label, geo = read_image(out / "labelsTr" / f"syn_{i:04d}.nii.gz")
        assert label.dtype == np.uint8 and geo.matches(healthy_geo) is None
        assert set(np.unique(label)) <= {0, 1}
        image, _ = read_image(out / "imagesTr" / f"syn_{i:04d}_0000.nii.gz")
        assert image.shape == healthy_image.shape and image.dtype == healthy_image.dtype
    assert any(read_image(out / "labelsTr" / f"syn_{i:04d}.nii.gz")[0].any() for i in range(2))


def test_existing_output_and_used_id_are_refused(exported, capsys):
    _, out_root = exported
    assert export(out_root, "--synthetic", "sphere", "--n", "1", "--id", "601", "-f", "0") == 1
    assert "--overwrite" in one_line_error(capsys)
    (out_root / "Dataset602_Other").mkdir()
    try:
        assert export(out_root, "--synthetic", "sphere", "--n", "1", "--id", "602", "-f", "0") == 1
        assert "602" in one_line_error(capsys)
    finally:
        (out_root / "Dataset602_Other").rmdir()
    assert export(out_root, "--synthetic", "copy_paste", "--n", "1", "--id", "603", "-f", "0") == 1
    assert "copy_paste" in one_line_error(capsys)
    assert check_nnunet_layout(out_root / OUT_NAME) == []


def test_check_finds_layout_problems(exported, tmp_path):
    import shutil

    _, out_root = exported
    broken = tmp_path / OUT_NAME
    shutil.copytree(out_root / OUT_NAME, broken)
    (broken / "imagesTr" / "syn_0001_0001.nii.gz").unlink()
    (broken / "imagesTr" / "notes.txt").write_text("x")
    meta = json.loads((broken / "dataset.json").read_text())
    meta["numTraining"] += 1
    del meta["labels"]["lesion"]
    (broken / "dataset.json").write_text(json.dumps(meta))
    problems = "\n".join(check_nnunet_layout(broken))
    assert "missing channel 1 of syn_0001" in problems
    assert "notes.txt: extra file" in problems
    assert "numTraining" in problems
    assert "not declared" in problems


def test_export_from_installed_models_and_user_healthy_scans_needs_no_raw_data(exported, tmp_path, monkeypatch):
    folders, _ = exported
    healthy = folders["raw"] / TINY_NAME / "imagesHealthy"
    for name in ("raw", "preprocessed"):  # nothing of the original data is reachable
        monkeypatch.setenv(f"lesiongen_{name}", str(tmp_path / f"empty_{name}"))
    models = folders["results"] / TINY_NAME
    args = ["-model", str(models), "--synthetic", "sphere", "--n", "3", "-o", str(tmp_path / "out"), "--id", "611",
            "-f", "0", "-device", "cpu", "--healthy", str(healthy), "--synthetic_only", "--seed", "3"]
    assert export_cli.main(args) == 0
    out = tmp_path / "out" / "Dataset611_DemoMSSynth"
    assert check_nnunet_layout(out) == []
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["lesiongen"]["num_real"] == 0
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"syn_{i:04d}.nii.gz" for i in range(3)]
    recorded = meta["lesiongen"]["models"]["inpainter"]
    assert recorded["sha256"] == sha256_file(models / "inpaint__lesiongenPlans" / "fold_0" / "checkpoint_final.pt")
    # without --synthetic_only the real cases are needed, and the raw dataset is not there: one line says so
    assert export_cli.main([a for a in args if a != "--synthetic_only"][:-2] + ["--id", "612"]) == 1


def test_batch_scans_shares_the_inpainter_between_cases_and_changes_no_case(exported, tmp_path, monkeypatch):
    """--batch_scans 3: the three synthetic cases go through the inpainter together (fewer calls, as many patches)
    and each is the case --batch_scans 1 writes."""
    folders, _ = exported
    healthy = folders["raw"] / TINY_NAME / "imagesHealthy"
    calls = count_inpaint_calls(monkeypatch)
    patches = {}
    for batch in (1, 3):
        calls.clear()
        assert export_cli.main(["-model", str(folders["results"] / TINY_NAME), "--synthetic", "sphere", "--n", "3",
                                "-o", str(tmp_path / f"out{batch}"), "--id", "613", "-f", "0", "-device", "cpu",
                                "--healthy", str(healthy), "--synthetic_only", "--seed", "5",
                                "--batch_scans", str(batch)]) == 0
        patches[batch] = list(calls)
    assert sum(patches[3]) == sum(patches[1]) > 0 and len(patches[3]) < len(patches[1])
    alone, together = (tmp_path / f"out{b}" / "Dataset613_DemoMSSynth" for b in (1, 3))
    records = [json.loads((out / "dataset.json").read_text())["lesiongen"]["synthetic_cases"]
               for out in (alone, together)]
    assert records[0] == records[1]
    for i in range(3):
        label, _ = read_image(alone / "labelsTr" / f"syn_{i:04d}.nii.gz")
        assert label.any() and np.array_equal(label, read_image(together / "labelsTr" / f"syn_{i:04d}.nii.gz")[0])
        for channel in range(2):
            one, _ = read_image(alone / "imagesTr" / f"syn_{i:04d}_{channel:04d}.nii.gz")
            many, _ = read_image(together / "imagesTr" / f"syn_{i:04d}_{channel:04d}.nii.gz")
            np.testing.assert_allclose(many, one, rtol=0, atol=1e-6 * np.abs(one).max())  # float rounding only
