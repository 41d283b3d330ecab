"""A seg model's postprocessing: small predicted lesions removed, the volume chosen on validation cases
(lesiongen_determine_postprocessing), stored in the model folder and applied by lesiongen_predict -m seg."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from conftest import TINY, TINY_NAME
from lesiongen.cli import determine_postprocessing as determine_cli
from lesiongen.cli import predict as predict_cli
from lesiongen.cli import train as train_cli
from lesiongen.evaluation.postprocessing import CANDIDATE_VOXELS, candidate_volumes, choose
from lesiongen.io.images import read_image, write_image
from lesiongen.models.folder import ModelFolder
from lesiongen.models.postprocessing import POSTPROCESSING_JSON, load_postprocessing, remove_small_lesions
from lesiongen.utilities.components import label_components


def test_remove_small_lesions_removes_the_components_below_the_volume_of_each_class():
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[0, 0, 0] = 1  # 1 voxel: 2 mm3 at the spacing below
    labels[4:6, 4:6, 4] = 1  # 4 voxels: 8 mm3
    labels[2, 2, 6] = labels[3, 3, 7] = 1  # touching by a corner: one lesion of 2 voxels (26-connected), 4 mm3
    labels[5:8, 0:3, 0:3] = 2  # 27 voxels of class 2
    labels[0, 7, 7] = 2  # 1 voxel of class 2
    kept, removed = remove_small_lesions(labels, (1.0, 1.0, 2.0), 4.0)
    expected = labels.copy()
    expected[0, 0, 0] = expected[0, 7, 7] = 0  # 2 mm3 each; the 4 mm3 pair is not below 4 and stays
    assert removed == 2
    np.testing.assert_array_equal(kept, expected)
    kept, removed = remove_small_lesions(labels, (1.0, 1.0, 2.0), 9.0)
    assert removed == 4
    assert set(zip(*np.nonzero(kept))) == set(zip(*np.nonzero(labels == 2))) - {(0, 7, 7)}
    assert remove_small_lesions(labels, (1.0, 1.0, 2.0), 0.0)[1] == 0


def test_the_chosen_volume_raises_lesion_f1_without_lowering_dice_and_ties_go_to_the_smaller():
    volumes = [0.0, 2.0, 3.0, 5.0]
    scores = [{"dice": 0.80, "lesion_f1": 0.50}, {"dice": 0.81, "lesion_f1": 0.70},
              {"dice": 0.81, "lesion_f1": 0.70}, {"dice": 0.79, "lesion_f1": 0.90}]
    assert choose(scores, volumes) == 2.0  # 5 has the best F1 but costs Dice; 3 only ties 2
    scores[3]["dice"] = 0.80  # Dice level with no postprocessing: allowed
    assert choose(scores, volumes) == 5.0
    flat = [{"dice": 0.8, "lesion_f1": 0.5}] + [{"dice": 0.9, "lesion_f1": 0.5}] * 3
    assert choose(flat, volumes) == 0.0  # F1 not raised: nothing removed


def test_candidates_stay_below_the_smallest_training_lesion():
    assert candidate_volumes(1.0, 10.0) == [0.0, 2.0, 3.0, 5.0]
    assert candidate_volumes(27.0, 1e9) == [0.0, *(27.0 * k for k in CANDIDATE_VOXELS)]
    assert candidate_volumes(27.0, 54.0) == [0.0]


def specks_far_from_lesions(reference: np.ndarray, n: int) -> list[tuple[int, ...]]:
    """Single voxels more than 2 voxels from any lesion and from each other."""
    free = ~ndimage.binary_dilation(reference > 0, iterations=3)
    picked: list[tuple[int, ...]] = []
    for voxel in zip(*np.nonzero(free)):
        if all(max(abs(a - b) for a, b in zip(voxel, p)) > 2 for p in picked):
            picked.append(tuple(int(v) for v in voxel))
        if len(picked) == n:
            return picked
    raise AssertionError("no room for the specks")


@pytest.fixture(scope="module")
def seg_model(tiny_preprocessed):
    """A 2-step seg fold 0 whose validation predictions are replaced by the references plus three one-voxel false
    lesions each, and the postprocessing determined on them (the file's text kept to restore it per test)."""
    assert train_cli.main([str(TINY.dataset_id), "seg", "0", "--steps", "2", "--set", "mirror_validation=false",
                           "-device", "cpu"]) == 0
    folder = model_folder(tiny_preprocessed)
    validation = sorted((folder.path / "fold_0" / "validation").glob("*.nii.gz"))
    assert validation
    for path in validation:
        reference, geometry = read_image(tiny_preprocessed["raw"] / TINY_NAME / "labelsTr" / path.name)
        speckled = reference.astype(np.uint8)
        for voxel in specks_far_from_lesions(reference, 3):
            speckled[voxel] = 1
        write_image(path, speckled, geometry)
    assert determine_cli.main(["-d", str(TINY.dataset_id), "-f", "0"]) == 0
    return {**tiny_preprocessed, "n_validation": len(validation),
            "postprocessing": (folder.path / POSTPROCESSING_JSON).read_text()}


@pytest.fixture
def postprocessing(seg_model) -> dict:
    """The determined postprocessing.json as written (a test before may have changed the file)."""
    (model_folder(seg_model).path / POSTPROCESSING_JSON).write_text(seg_model["postprocessing"])
    return json.loads(seg_model["postprocessing"])


def model_folder(folders) -> ModelFolder:
    return ModelFolder(folders["results"] / TINY_NAME / "seg_none__lesiongenPlans")


def test_determine_removes_specks_added_to_perfect_validation_predictions(seg_model, postprocessing):
    record = postprocessing
    voxel = record["voxel_mm3"]
    assert voxel == pytest.approx(27.0)
    none, smallest = record["candidates"][0], record["candidates"][1]
    assert none["min_lesion_volume_mm3"] == 0 and none["lesion_precision"] < 1 and none["dice"] < 1
    # every speck goes with the smallest candidate and nothing else does: perfect, so no larger one is chosen
    assert smallest["voxels"] == 2 and smallest["lesions_removed"] == 3 * seg_model["n_validation"]
    assert smallest["dice"] == pytest.approx(1.0) and smallest["lesion_f1"] == pytest.approx(1.0)
    assert record["min_lesion_volume_mm3"] == pytest.approx(2 * voxel)
    assert all(c["min_lesion_volume_mm3"] < record["smallest_training_lesion_mm3"] for c in record["candidates"])
    assert f"remove predicted lesions below {2 * voxel:g} mm3" in determine_cli.format_table(record)
    assert load_postprocessing(model_folder(seg_model)).min_lesion_volume_mm3 == pytest.approx(2 * voxel)


@pytest.fixture
def scan_folder(seg_model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for channel in range(2):
        shutil.copy(seg_model["raw"] / TINY_NAME / "imagesTs" / f"test_000_{channel:04d}.nii.gz", images)
    return images


def test_predict_applies_the_model_folder_s_postprocessing_unless_disabled(seg_model, postprocessing, scan_folder,
                                                                              tmp_path, monkeypatch):
    from lesiongen.inference import run_predict

    folder = model_folder(seg_model)
    record = dict(postprocessing)
    record["min_lesion_volume_mm3"] = 3 * record["voxel_mm3"]  # removes lesions of 1 and 2 voxels
    (folder.path / POSTPROCESSING_JSON).write_text(json.dumps(record))
    image, _ = read_image(scan_folder / "test_000_0000.nii.gz")
    network_output = np.zeros(image.shape, dtype=np.uint8)
    network_output[2:5, 2:5, 2:5] = 1  # 27 voxels
    network_output[10, 10, 10] = 1
    network_output[20, 20, 20:22] = 1
    network_output[30, 30, 30:33] = 1  # 3 voxels: not below the volume
    monkeypatch.setattr(run_predict, "segment", lambda *args, **kwargs: (network_output.copy(), None, None))
    for extra, expected_lesions in (([], 2), (["--disable_postprocessing"], 4)):
        out = tmp_path / f"out{len(extra)}"
        assert predict_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-device", "cpu", "-i", str(scan_folder),
                                 "-o", str(out), "-m", "seg", *extra]) == 0
        written, _ = read_image(out / "test_000.nii.gz")
        assert label_components(written > 0)[1] == expected_lesions
        assert ((written > 0) <= (network_output > 0)).all()
    assert written.sum() == network_output.sum()


def test_a_postprocessing_chosen_for_other_checkpoints_is_not_applied(seg_model, postprocessing, caplog):
    folder = model_folder(seg_model)
    path = folder.path / POSTPROCESSING_JSON
    record = dict(postprocessing)
    assert load_postprocessing(folder) is not None
    record["checkpoints"]["0"] = "0" * 64  # as if fold 0 had been retrained since
    path.write_text(json.dumps(record))
    assert load_postprocessing(folder) is None
    assert "not applied (rerun lesiongen_determine_postprocessing)" in caplog.text


def test_bad_postprocessing_file_and_fold_all_are_one_line_errors(seg_model, postprocessing, scan_folder, tmp_path,
                                                                  capsys):
    folder = model_folder(seg_model)
    (folder.path / POSTPROCESSING_JSON).write_text("{")
    out = tmp_path / "out"
    assert predict_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-device", "cpu", "-i", str(scan_folder),
                             "-o", str(out), "-m", "seg"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(folder.path / POSTPROCESSING_JSON) in error
    assert not out.exists() or not any(out.iterdir())
    assert determine_cli.main(["-d", str(TINY.dataset_id), "-f", "all"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "fold all validates on its own training cases" in error
    assert determine_cli.main(["-d", str(TINY.dataset_id), "--synthetic", "sphere"]) == 1
    assert "seg_sphere__lesiongenPlans: model folder not found" in capsys.readouterr().err


def test_a_shared_model_takes_its_postprocessing_along_and_it_still_applies(seg_model, postprocessing, tmp_path,
                                                                            monkeypatch):
    from lesiongen.sharing.model_zip import export_model_to_zip, install_model_from_zip

    archive = tmp_path / "model.zip"
    names = export_model_to_zip(TINY_NAME, archive, trainers=["seg_none__lesiongenPlans"], folds=["0"])
    assert f"{TINY_NAME}/seg_none__lesiongenPlans/{POSTPROCESSING_JSON}" in names
    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("lesiongen_results", str(fresh))
    installed = install_model_from_zip(archive)
    assert load_postprocessing(ModelFolder(installed[0])).min_lesion_volume_mm3 == \
        pytest.approx(postprocessing["min_lesion_volume_mm3"])


def test_compare_shows_the_strategies_as_predict_delivers_them_after_postprocessing(seg_model, postprocessing,
                                                                                     tmp_path):
    """none has a postprocessing that removes every speck of its validation predictions (Dice and F1 become 1); a
    copy of it as sphere has none, so after postprocessing sphere keeps its fold's scores and trails none by them."""
    from lesiongen.evaluation.compare import run_comparison

    none_folder = model_folder(seg_model).path
    sphere_folder = none_folder.with_name("seg_sphere__lesiongenPlans")
    shutil.copytree(none_folder, sphere_folder)
    try:
        (sphere_folder / POSTPROCESSING_JSON).unlink()
        rows, paths = run_comparison(TINY_NAME, "lesiongenPlans", None, tmp_path / "comparison")
        report = json.loads(paths["json"].read_text())
        markdown = paths["markdown"].read_text()
    finally:
        shutil.rmtree(sphere_folder)
    after = report["postprocessed"]
    volume = postprocessing["min_lesion_volume_mm3"]
    assert after["min_lesion_volume_mm3"] == {"none": pytest.approx(volume)}
    before = {row["strategy"]: row for row in rows}
    rows_after = {row["strategy"]: row for row in after["rows"]}
    assert before["none"]["dice"][0] < 0.5  # the 2-step network's own scores, which its summary holds
    assert rows_after["none"]["dice"] == [pytest.approx(1.0), pytest.approx(0.0)]
    assert rows_after["none"]["lesion_f1"] == [pytest.approx(1.0), pytest.approx(0.0)]
    for metric in ("dice", "lesion_f1", "hd95"):
        assert rows_after["sphere"][metric] == pytest.approx(list(before["sphere"][metric]), nan_ok=True)
    paired = rows_after["sphere"]["paired_vs_none"]["dice"]
    assert paired["n_cases"] == seg_model["n_validation"]
    assert paired["mean"] == pytest.approx(before["sphere"]["dice"][0] - 1.0)
    assert "## After postprocessing" in markdown and f"none below {volume:g} mm3" in markdown
    # without a postprocessing, the comparison has no second table
    (none_folder / POSTPROCESSING_JSON).unlink()
    _, paths = run_comparison(TINY_NAME, "lesiongenPlans", None, tmp_path / "plain")
    assert "postprocessed" not in json.loads(paths["json"].read_text())
    assert "After postprocessing" not in paths["markdown"].read_text()


def speckled_label(path) -> tuple[np.ndarray, object]:
    """A label with three one-voxel false lesions added, and its geometry."""
    reference, geometry = read_image(path)
    speckled = reference.astype(np.uint8)
    for voxel in specks_far_from_lesions(reference, 3):
        speckled[voxel] = 1
    return speckled, geometry


def test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them(tiny_preprocessed,
                                                                                               tmp_path, capsys,
                                                                                               monkeypatch):
    """lesiongen_benefit --cv_postprocessing trains the first seed's real-only seg model on the asked folds (its
    validation mirrored as the test scans are), chooses the volume on their validation predictions and scores every
    model's test predictions without the lesions below it. Oracle: each validation prediction and the test
    prediction are the reference label plus three one-voxel specks, so the smallest candidate (2 voxels) is chosen
    and the test scores become exactly 1. Reruns reuse the fold and the choice; a choice for other checkpoints, or
    a file that cannot be read, is chosen again."""
    from lesiongen import benefit as benefit_module
    from lesiongen.cli import benefit as benefit_cli
    from lesiongen.training.trainers.seg import SegTrainer

    raw = tiny_preprocessed["raw"] / TINY_NAME
    speckled, _ = speckled_label(raw / "labelsTs" / "test_000.nii.gz")
    monkeypatch.setattr(benefit_module, "segment", lambda *args, **kwargs: (speckled.copy(), None, None))
    validate_cases, mirrored = SegTrainer.validate_cases, []

    def oracle_validation(trainer, model):
        mean = validate_cases(trainer, model)
        mirrored.append(trainer.mirror_validation)
        for path in (trainer.output_folder / "validation").glob("*.nii.gz"):
            write_image(path, *speckled_label(raw / "labelsTr" / path.name))
        return mean

    monkeypatch.setattr(SegTrainer, "validate_cases", oracle_validation)
    args = ["-d", str(TINY.dataset_id), "--strategies", "none", "--seeds", "0", "--sweep", "none", "--seg_steps", "2",
            "--disable_tta", "-device", "cpu"]
    assert benefit_cli.main([*args, "-o", str(tmp_path / "as_predicted")]) == 0
    as_predicted = json.loads((tmp_path / "as_predicted" / "benefit.json").read_text())["per_case"]["seg_none_s0"]
    assert as_predicted["test_000"]["lesion_precision"] < 1 and as_predicted["test_000"]["dice"] < 1
    assert not mirrored  # fold all is not validated

    def run(name: str) -> dict:
        assert benefit_cli.main([*args, "--cv_postprocessing", "1", "-o", str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name / "benefit.json").read_text())

    report = run("benefit")
    folder = ModelFolder(tiny_preprocessed["results"] / TINY_NAME / "seg_none_s0__lesiongenPlans")
    path = folder.path / POSTPROCESSING_JSON
    record = json.loads(path.read_text())
    n_validation = len(list((folder.path / "fold_1" / "validation").glob("*.nii.gz")))
    assert mirrored == [False] and report["trainings"]["seg_none_s0/fold_1"] == "trained"
    assert not (folder.path / "fold_0").exists()  # only the asked fold
    assert record["folds"] == ["1"] and record["n_cases"] == n_validation > 0
    assert record["min_lesion_volume_mm3"] == pytest.approx(2 * 27.0)  # the specks go, nothing else
    chosen = report["postprocessing"]
    assert chosen["min_lesion_volume_mm3"] == pytest.approx(2 * 27.0) and chosen["choice"] == "chosen now"
    assert chosen["folds"] == ["1"] and chosen["chosen_by"] == str(path)
    assert "seg_none_s0/fold_1" in report["provenance"]["models"]
    scores = report["per_case"]["seg_none_s0"]["test_000"]
    assert scores["dice"] == pytest.approx(1.0) and scores["lesion_f1"] == pytest.approx(1.0)
    assert np.array_equal(read_image(tmp_path / "benefit" / "predictions" / "seg_none_s0" / "test_000.nii.gz")[0],
                          speckled)
    assert "below 54 mm3 were removed before scoring, for every model alike, as lesiongen_determine_postprocessing " \
           f"chose on the real-only seg model's cross-validation (fold 1, {n_validation} validation case" \
           in (tmp_path / "benefit" / "benefit.md").read_text()
    assert f"{path}; chosen by this run)" in (tmp_path / "benefit" / "benefit.md").read_text()
    # a rerun: the fold is as asked and so is the choice
    again = run("again")
    assert again["trainings"]["seg_none_s0/fold_1"] == "up to date" and again["postprocessing"]["choice"] == "reused"
    assert len(mirrored) == 1
    assert f"{path}; chosen by an earlier run on the same fold checkpoints)" in \
        (tmp_path / "again" / "benefit.md").read_text()
    # chosen for another checkpoint, or unreadable: chosen again from the fold's validation, which stays
    path.write_text(json.dumps(dict(record, checkpoints={"1": "0" * 64})))
    stale = run("stale")["postprocessing"]
    assert stale["choice"] == "chosen now" and stale["min_lesion_volume_mm3"] == pytest.approx(54.0)
    assert json.loads(path.read_text())["checkpoints"] == record["checkpoints"]
    path.write_text("{")
    assert run("unreadable")["postprocessing"]["choice"] == "chosen now" and len(mirrored) == 1
    # a fold the splits do not have: one line, before anything is trained or written
    capsys.readouterr()
    assert benefit_cli.main([*args, "--cv_postprocessing", "7", "-o", str(tmp_path / "no_fold")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--cv_postprocessing 7" in error and "splits_final.json has folds 0-3" in error
    assert not (tmp_path / "no_fold").exists()


def test_cv_postprocessing_trains_the_first_seed_s_real_only_model_on_every_fold_by_default(tiny_preprocessed):
    """The folds are the dataset's splits (4 for the 4-case tiny dataset), each trained as the compared real-only
    model of the first seed (steps, settings, seed) but validating, mirrored as the test scans are."""
    from lesiongen.benefit import BenefitOptions, cv_fold_jobs
    from lesiongen.preprocessing.dataset import open_preprocessed

    dataset = open_preprocessed(str(TINY.dataset_id), "lesiongenPlans")
    options = BenefitOptions(dataset=str(TINY.dataset_id), seeds=(2, 0), seg_steps=5, cv_postprocessing=True,
                             trainer_settings=(("seg", "balanced_ce_until", "0.5"),))
    jobs = cv_fold_jobs(options, dataset)
    assert [job.fold for job in jobs] == ["0", "1", "2", "3"]
    assert [job.name for job in jobs] == [f"seg_none_s2/fold_{fold}" for fold in range(4)]
    assert jobs[1].settings() == {"balanced_ce_until": "0.5", "synthetic_ratio": 1.0, "validate": True,
                                  "mirror_validation": True}
    command = jobs[1].command(options)
    assert command[command.index("seg") + 1] == "1" and command[command.index("--seed") + 1] == "2"
    unmirrored = cv_fold_jobs(BenefitOptions(dataset=str(TINY.dataset_id), mirror=False, cv_folds=(3, 0, 3)), dataset)
    assert [job.fold for job in unmirrored] == ["3", "0"] and unmirrored[0].settings()["mirror_validation"] is False
