"""The procedural demo dataset: layout, geometry, anatomy, lesions, seeding and safe (re)writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import folder_digest
from scipy import ndimage

from lesiongen.demo import phantom
from lesiongen.demo.phantom import CSF, GM, WM, DemoConfig, make_phantom, write_demo_dataset
from lesiongen.io.images import read_geometry, read_image
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json

SMALL = DemoConfig(dataset_id=777, dataset_name="PhantomTest", n_lesion_cases=3, n_healthy=2, n_test=1,
                   shape=(40, 48, 40), spacing=(3.0, 3.0, 3.0), seed=3)
ENDING = SMALL.file_ending
TRAIN = [f"demo_{i:03d}" for i in range(SMALL.n_lesion_cases)]
TEST = [f"test_{i:03d}" for i in range(SMALL.n_test)]
HEALTHY = [f"healthy_{i:03d}" for i in range(SMALL.n_healthy)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("raw"), SMALL)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _channels(cases: list[str]) -> set[str]:
    return {f"{c}_{k:04d}{ENDING}" for c in cases for k in range(2)}


def _maps(cases: list[str]) -> set[str]:
    return {f"{c}{ENDING}" for c in cases}


def _case(dataset: Path, case: str, image_dir: str, **maps: str) -> dict[str, np.ndarray]:
    arrays = {"t1": read_image(dataset / image_dir / f"{case}_0000{ENDING}")[0],
              "flair": read_image(dataset / image_dir / f"{case}_0001{ENDING}")[0]}
    for key, folder in maps.items():
        arrays[key] = read_image(dataset / folder / f"{case}{ENDING}")[0]
    return arrays


def _training(dataset: Path, case: str) -> dict[str, np.ndarray]:
    return _case(dataset, case, "imagesTr", label="labelsTr", tissue="tissueTr", mask="brainmasksTr")


def test_files_and_counts_follow_the_spec(dataset):
    assert dataset.name == "Dataset777_PhantomTest"
    expected = {
        "imagesTr": _channels(TRAIN), "labelsTr": _maps(TRAIN), "tissueTr": _maps(TRAIN),
        "brainmasksTr": _maps(TRAIN), "imagesTs": _channels(TEST), "labelsTs": _maps(TEST),
        "imagesHealthy": _channels(HEALTHY), "tissueHealthy": _maps(HEALTHY), "brainmasksHealthy": _maps(HEALTHY),
    }
    assert _names(dataset) == set(expected) | {"dataset.json"}
    for folder, files in expected.items():
        assert _names(dataset / folder) == files, folder
    info = read_json(dataset / "dataset.json")
    assert info["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert info["labels"] == {"background": 0, "lesion": 1}
    assert info["numTraining"] == 3 and info["numHealthy"] == 2
    assert info["file_ending"] == ".nii.gz"
    assert info["tissue_labels"] == {"GM": 1, "WM": 2, "CSF": 3}
    # nothing but the dataset was left in the raw root (no staging folders)
    assert _names(dataset.parent) == {dataset.name}


def test_every_file_of_a_case_shares_the_geometry(dataset):
    folders = [("imagesTr", ("labelsTr", "tissueTr", "brainmasksTr"), TRAIN), ("imagesTs", ("labelsTs",), TEST),
               ("imagesHealthy", ("tissueHealthy", "brainmasksHealthy"), HEALTHY)]
    for image_dir, map_dirs, cases in folders:
        for case in cases:
            files = [dataset / image_dir / f"{case}_{k:04d}{ENDING}" for k in range(2)]
            files += [dataset / d / f"{case}{ENDING}" for d in map_dirs]
            reference = read_geometry(files[0])
            assert reference.shape == SMALL.shape and reference.spacing_zyx == SMALL.spacing
            for path in files[1:]:
                assert read_geometry(path).matches(reference) is None, path
            for path in files[2:]:
                assert read_image(path)[0].dtype == np.uint8, path


@pytest.mark.parametrize("image_dir, maps, cases", [
    ("imagesTr", {"tissue": "tissueTr", "mask": "brainmasksTr"}, TRAIN),
    ("imagesHealthy", {"tissue": "tissueHealthy", "mask": "brainmasksHealthy"}, HEALTHY),
])
def test_skull_stripped_anatomy(dataset, image_dir, maps, cases):
    for case in cases:
        a = _case(dataset, case, image_dir, **maps)
        brain = a["mask"].astype(bool)
        assert set(np.unique(a["mask"])) == {0, 1}
        assert set(np.unique(a["tissue"])) == {0, GM, WM, CSF}
        np.testing.assert_array_equal(brain, a["tissue"] > 0)
        for channel in ("t1", "flair"):
            image = a[channel]
            assert np.isfinite(image).all()
            assert (image[~brain] == 0).all() and (image[brain] > 0).all()
        # the brain fills most of the field of view but background surrounds it on every side
        assert 0.15 < brain.mean() < 0.5
        for axis in range(3):
            assert not brain.take([0, -1], axis=axis).any()
        # one connected brain; contrasts in the expected order
        assert ndimage.label(brain)[1] == 1
        t1 = {t: a["t1"][a["tissue"] == t].mean() for t in (GM, WM, CSF)}
        flair = {t: a["flair"][a["tissue"] == t].mean() for t in (GM, WM, CSF)}
        assert t1[WM] > t1[GM] > t1[CSF]
        assert flair[GM] > flair[WM] > flair[CSF]


@pytest.mark.parametrize("image_dir, label_dir, cases", [("imagesTr", "labelsTr", TRAIN),
                                                          ("imagesTs", "labelsTs", TEST)])
def test_lesions_are_ms_like(dataset, image_dir, label_dir, cases):
    tissue_under_lesions = []
    for case in cases:
        a = _case(dataset, case, image_dir, label=label_dir)
        label = a["label"]
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
        lesion = label == 1
        components, count = ndimage.label(lesion)
        assert count >= 1
        assert np.bincount(components.ravel())[1:].min() >= 3  # at least a few voxels each
        assert (a["t1"][lesion] > 0).all()  # inside the (skull-stripped) brain
        if image_dir == "imagesTr":
            t = _training(dataset, case)
            assert t["mask"][lesion].all()
            tissue_under_lesions.append(t["tissue"][lesion])
            white = (t["tissue"] == WM) & ~lesion
            assert a["flair"][lesion].mean() > 1.15 * a["flair"][white].mean()
            assert a["t1"][lesion].mean() < 0.9 * a["t1"][white].mean()
    if tissue_under_lesions:
        under = np.concatenate(tissue_under_lesions)
        assert (under == WM).mean() > 0.8  # the tissue map shows white matter under the lesions
        assert not (under == CSF).any()


def test_healthy_scans_are_label_free(dataset):
    assert not any(p.name.startswith("labelsHealthy") for p in dataset.iterdir())
    subject = make_phantom((36, 40, 36), (3.0, 3.0, 3.0), np.random.default_rng(0), n_lesions=0)
    assert subject.n_lesions == 0 and not subject.label.any()


def test_subjects_differ(dataset):
    masks = [read_image(dataset / "brainmasksTr" / f"{c}{ENDING}")[0] for c in TRAIN]
    masks += [read_image(dataset / "brainmasksHealthy" / f"{c}{ENDING}")[0] for c in HEALTHY]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not np.array_equal(masks[i], masks[j])


def test_same_seed_same_arrays_other_seed_different(tmp_path):
    def subject(seed: int):
        return make_phantom((36, 44, 36), (3.0, 3.0, 3.0), np.random.default_rng(seed), n_lesions=4)

    first, again, other = subject(11), subject(11), subject(12)
    for name in ("t1", "flair", "label", "tissue", "brain_mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        assert not np.array_equal(getattr(first, name), getattr(other, name)), name

    config = DemoConfig(n_lesion_cases=1, n_healthy=1, n_test=0, shape=(32, 36, 32), spacing=(3.0, 3.0, 3.0), seed=5)
    a = write_demo_dataset(tmp_path / "a", config)
    b = write_demo_dataset(tmp_path / "b", config)
    c = write_demo_dataset(tmp_path / "c", DemoConfig(**{**config.__dict__, "seed": 6}))
    files = (f"imagesTr/demo_000_0001{ENDING}", f"labelsTr/demo_000{ENDING}", f"imagesHealthy/healthy_000_0000{ENDING}")
    for rel in files:
        np.testing.assert_array_equal(read_image(a / rel)[0], read_image(b / rel)[0])
        assert not np.array_equal(read_image(a / rel)[0], read_image(c / rel)[0])


def test_existing_folder_needs_overwrite(tmp_path):
    config = DemoConfig(n_lesion_cases=1, n_healthy=0, n_test=0, shape=(32, 36, 32), spacing=(3.0, 3.0, 3.0))
    folder = write_demo_dataset(tmp_path, config)
    before = folder_digest(folder)
    with pytest.raises(LesiongenError) as error:
        write_demo_dataset(tmp_path, DemoConfig(**{**config.__dict__, "seed": 1}))
    message = str(error.value)
    assert str(folder) in message and "\n" not in message
    assert folder_digest(folder) == before

    (folder / "stale.txt").write_text("from an older run")
    again = write_demo_dataset(tmp_path, DemoConfig(**{**config.__dict__, "seed": 1}), overwrite=True)
    assert again == folder and not (folder / "stale.txt").exists()
    assert folder_digest(folder) != before
    assert _names(tmp_path) == {folder.name}


def test_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    config = DemoConfig(n_lesion_cases=2, n_healthy=0, n_test=0, shape=(32, 36, 32), spacing=(3.0, 3.0, 3.0))
    calls = []
    real = phantom.make_phantom

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "make_phantom", failing)
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(tmp_path, config)
    assert list(tmp_path.iterdir()) == []


def test_invalid_config_is_a_user_error():
    with pytest.raises(LesiongenError):
        DemoConfig(lesions_per_case=(3, 2))
    with pytest.raises(LesiongenError):
        DemoConfig(file_ending=".png")
    with pytest.raises(LesiongenError):
        DemoConfig(dataset_name="has space")


def test_nibabel_dataset_needs_no_simpleitk(tmp_path):
    """A dataset written with NibabelIO records it and goes through planning and preprocessing without SimpleITK
    (a machine without that wheel can run the whole pipeline on NIfTI)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "SimpleITK.py").write_text("raise ImportError('SimpleITK is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
               lesiongen_raw=str(tmp_path / "raw"), lesiongen_preprocessed=str(tmp_path / "pre"),
               lesiongen_results=str(tmp_path / "results"))
    steps = (("demo:main_make_demo_dataset", "--dataset_id", "778", "--n_lesion_cases", "2", "--n_healthy", "1",
              "--n_test", "0", "--image_reader", "NibabelIO"),
             ("plan_and_preprocess:main_plan_and_preprocess", "-d", "778", "-np", "1"))
    for entry, *arguments in steps:
        module, function = entry.split(":")
        call = f"import sys; from lesiongen.cli.{module} import {function}; {function}(sys.argv[1:])"
        done = subprocess.run([sys.executable, "-c", call, *arguments], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "raw" / "Dataset778_DemoMS"
    assert read_json(folder / "dataset.json")["overwrite_image_reader_writer"] == "NibabelIO"
    nib_array, nib_geometry = read_image(folder / "labelsTr" / f"demo_000{ENDING}", "NibabelIO")
    sitk_array, sitk_geometry = read_image(folder / "labelsTr" / f"demo_000{ENDING}")
    np.testing.assert_array_equal(nib_array, sitk_array)
    assert nib_geometry.matches(sitk_geometry) is None
    assert any((tmp_path / "pre" / "Dataset778_DemoMS").rglob("*.b2nd"))


def test_nibabel_reader_writes_nifti_only():
    with pytest.raises(LesiongenError, match="NIfTI only"):
        DemoConfig(image_reader="NibabelIO", file_ending=".nrrd")
    with pytest.raises(LesiongenError, match="image_reader"):
        DemoConfig(image_reader="PNGIO")


def test_make_demo_dataset_takes_shape_and_spacing(tmp_path, capsys):
    from lesiongen.cli.demo import main_make_demo_dataset

    arguments = ["-o", str(tmp_path), "--n_lesion_cases", "1", "--n_healthy", "0", "--n_test", "0", "--shape", "20",
                 "24", "18", "--spacing", "3", "2.5", "2"]
    assert main_make_demo_dataset(arguments) == 0
    image, geometry = read_image(tmp_path / "Dataset501_DemoMS" / "imagesTr" / f"demo_000_0000{ENDING}")
    assert image.shape == (20, 24, 18) and tuple(geometry.spacing_zyx) == pytest.approx((3.0, 2.5, 2.0))
    assert main_make_demo_dataset(["-o", str(tmp_path / "small"), "--shape", "8", "24", "24"]) == 1
    assert "shape must be 3 sizes of at least 16 voxels" in capsys.readouterr().err


# ------------------------------------------------------------------------------ whole heads (brain extraction)
HEADS = DemoConfig(dataset_id=778, dataset_name="HeadTest", n_lesion_cases=2, n_healthy=1, n_test=1,
                   shape=(54, 62, 54), spacing=(3.0, 3.0, 3.0), seed=4, whole_head=True)


@pytest.mark.parametrize("seed", [0, 2])
def test_whole_head_wraps_the_brain_in_dark_bone_bright_scalp_and_noisy_air(seed):
    head = make_phantom(HEADS.shape, HEADS.spacing, np.random.default_rng(seed), 2, whole_head=True)
    brain = head.brain_mask > 0
    outside_mm = ndimage.distance_transform_edt(~brain, sampling=HEADS.spacing)
    reference = np.median(head.t1[brain])

    def shell(low: float, high: float) -> float:  # median T1 between low and high mm outside the brain
        return float(np.median(head.t1[(outside_mm > low) & (outside_mm <= high)]) / reference)

    assert shell(0, 3) < 0.45  # the skull's inner table: dark right outside the brain
    assert max(shell(3, 6), shell(6, 9), shell(9, 12)) > 0.8  # then marrow and scalp fat, bright on T1
    assert shell(18, 30) < 0.08  # air
    # noise everywhere: "nonzero = brain" (right for skull-stripped scans) is wrong for a whole head
    assert (head.t1[~brain] != 0).mean() > 0.99 and (head.flair[~brain] != 0).mean() > 0.99


def test_whole_head_dataset_is_a_brain_extraction_task(tmp_path):
    folder = write_demo_dataset(tmp_path, HEADS)
    content = read_json(folder / "dataset.json")
    assert content["labels"] == {"background": 0, "brain": 1} and "tissue_labels" not in content
    assert _names(folder) == {"dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesHealthy"}
    # each label is its subject's brain mask (the same subject drawn again from its seed), not its lesions
    for split, case in (("training", "demo_000"), ("test", "test_000")):
        rng = phantom._subject_rng(HEADS.seed, split, 0)
        subject = make_phantom(HEADS.shape, HEADS.spacing, rng, int(rng.integers(2, 9)), HEADS.lesion_radius_mm,
                               whole_head=True)
        folder_name = "labelsTr" if split == "training" else "labelsTs"
        label, _ = read_image(folder / folder_name / f"{case}{ENDING}")
        np.testing.assert_array_equal(label, subject.brain_mask)
        assert subject.label.any() and subject.label.sum() < 0.1 * label.sum()



def test_demo_variants_are_exclusive_and_the_lesion_demo_refuses_heads(tmp_path, capsys):
    from lesiongen.cli.demo import main_demo, main_make_demo_dataset

    assert main_make_demo_dataset(["-o", str(tmp_path), "--whole_head", "--anisotropic"]) == 1
    assert "--anisotropic and --whole_head are different demo datasets" in capsys.readouterr().err
    assert main_demo(["--whole_head", "--dataset_id", "779"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writes a brain-extraction dataset, not a lesion one" in err[0]
    assert not any(tmp_path.iterdir())
