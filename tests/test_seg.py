"""The seg trainer with every synthetic strategy, leakage guards and the strategy comparison, on CPU."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_NAME, count_inpaint_calls
from lesiongen.cli import compare as compare_cli
from lesiongen.cli import train as train_cli
from lesiongen.demo.pipeline import DEMO_SEG_SETTINGS
from lesiongen.io.images import read_image
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import plans_sha256
from lesiongen.utilities.seeding import DEFAULT_SEED
from lesiongen.training.synthetic import make_synthetic_cases, synthetic_folder
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.provenance import sha256_file

STRATEGIES = ("none", "sphere", "unetmask", "diffmask", "ganmask", "copy_paste", "realmask")


def train(*args: str) -> int:
    return train_cli.main([str(TINY.dataset_id), *args, "-device", "cpu"])


@pytest.fixture(scope="module")
def seg_runs(tiny_preprocessed):
    """Generators and inpainter briefly trained on fold 0, then a 2-step seg fold per strategy."""
    for name in ("spheremask", "unetmask", "diffmask", "ganmask", "inpaint"):  # few sampling steps: mechanics only
        fast = ["--set", "sampling_steps=4"] if name in ("diffmask", "inpaint") else []
        assert train(name, "0", "--steps", "2", *fast) == 0
    for strategy in STRATEGIES:
        # the learned generators, trained 2 steps, may give no lesion at all: allowed here, an error by default
        allow = ["--set", "max_empty_synthetic_fraction=1"] if strategy in ("unetmask", "diffmask", "ganmask") else []
        # mirrored validation (8 passes per window) once is enough: the others check the strategy, not mirroring
        mirror = [] if strategy == "none" else ["--set", "mirror_validation=false"]
        assert train("seg", "0", "--steps", "2", "--synthetic", strategy, "--synthetic_ratio", "0.33", *allow,
                     *mirror) == 0
    return tiny_preprocessed


def variant(strategy: str) -> str:
    """The seg runs below use synthetic ratio 0.33 (one synthetic case): their folders say so."""
    return strategy if strategy == "none" else f"{strategy}_r0.33"


def fold_folder(folders, strategy: str):
    return folders["results"] / TINY_NAME / f"seg_{variant(strategy)}__lesiongenPlans" / "fold_0"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seg_fold_writes_validation_at_original_geometry_and_summary(seg_runs, strategy):
    folder = fold_folder(seg_runs, strategy)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["strategy"] == strategy
    dataset = open_preprocessed(TINY.dataset_id)
    training = json.loads((folder / "training_summary.json").read_text())
    assert set(summary["per_case"]) == set(training["val_cases"])
    for case in training["val_cases"]:
        prediction, geometry = read_image(folder / "validation" / f"{case}.nii.gz")
        _, reference_geometry = read_image(seg_runs["raw"] / TINY_NAME / "labelsTr" / f"{case}.nii.gz")
        assert geometry.matches(reference_geometry) is None
        assert set(np.unique(prediction)) <= {0, *dataset.plans.lesion_labels}
    for case in training["val_cases"]:  # the summary scores exactly what was exported, against the raw label
        prediction, _ = read_image(folder / "validation" / f"{case}.nii.gz")
        reference, _ = read_image(seg_runs["raw"] / TINY_NAME / "labelsTr" / f"{case}.nii.gz")
        overlap, total = ((prediction == 1) & (reference == 1)).sum(), (prediction == 1).sum() + (reference == 1).sum()
        dice = 1.0 if total == 0 else 2 * overlap / total
        assert summary["per_case"][case]["1"]["dice"] == pytest.approx(dice)
    assert training["synthetic_cases"] == (0 if strategy == "none" else 1)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
def test_synthetic_cases_are_cached_with_lesions_inside_the_brain(seg_runs, strategy):
    dataset = open_preprocessed(TINY.dataset_id)
    folder = synthetic_folder(dataset, strategy, 0, DEFAULT_SEED)
    record = json.loads((folder / "syn_000.json").read_text())
    assert record["key"]["fold"] == "0" and record["key"]["strategy"] == strategy
    assert record["lesions"] == len(record["lesion_records"]) and record["lesion_voxels"] == int((load_array(
        folder / "syn_000_seg.b2nd") > 0).sum())
    seg = load_array(folder / "syn_000_seg.b2nd")
    images = load_array(folder / "syn_000.b2nd")
    healthy = load_array(dataset.data_folder / "healthy" / f"{record['key']['source_healthy_case']}.b2nd")
    assert images.shape == healthy.shape
    if strategy in ("sphere", "copy_paste", "realmask"):  # untrained learned generators may give no lesion yet
        assert (seg > 0).any()
        assert not np.array_equal(images, healthy)
    assert np.array_equal(images != healthy, (images != healthy) & (seg >= 0)[None])  # changes only in the brain
    before = (folder / "syn_000.b2nd").stat().st_mtime_ns
    train_cases = json.loads((fold_folder(seg_runs, strategy) / "training_summary.json").read_text())["train_cases"]
    sha = plans_sha256(dataset.plans)
    made = make_synthetic_cases(dataset, 0, strategy, 1, train_cases, sha, seed=DEFAULT_SEED, max_empty_fraction=1)
    assert made.made == 0 and (folder / "syn_000.b2nd").stat().st_mtime_ns == before  # cached, not remade
    roles = {"copy_paste": set(), "realmask": {"inpainter"}}.get(strategy, {"mask_generator", "inpainter"})
    assert set(made.models_used) == roles
    assert all(len(m["sha256"]) == 64 for m in made.models_used.values())


def test_another_seed_gets_its_own_synthetic_cases_and_leaves_the_first_ones(seg_runs):
    """Seg runs of several seeds (side by side under lesiongen_benefit --parallel) must not overwrite each other."""
    dataset = open_preprocessed(TINY.dataset_id)
    first = synthetic_folder(dataset, "copy_paste", 0, DEFAULT_SEED)
    before = {f.name: f.stat().st_mtime_ns for f in first.iterdir()}
    train_cases = json.loads((fold_folder(seg_runs, "copy_paste") / "training_summary.json").read_text())["train_cases"]
    unseeded = [first.parent / name for name in ("syn_000.b2nd", "syn_000_seg.b2nd", "syn_000_locations.npz",
                                                 "syn_000.json")]  # the layout before one folder per seed
    for path in unseeded:
        path.write_bytes(b"old")
    (first.parent / "notes.txt").write_text("the user's")
    made = make_synthetic_cases(dataset, 0, "copy_paste", 1, train_cases, plans_sha256(dataset.plans),
                                seed=DEFAULT_SEED + 1, max_empty_fraction=1)
    assert not any(path.exists() for path in unseeded) and (first.parent / "notes.txt").exists()
    assert made.made == 1 and made.cases[0].stem.parent == synthetic_folder(dataset, "copy_paste", 0, DEFAULT_SEED + 1)
    assert {f.name: f.stat().st_mtime_ns for f in first.iterdir()} == before
    keys = [json.loads((folder / "syn_000.json").read_text())["key"] for folder in (first, made.cases[0].stem.parent)]
    assert keys[0]["seed"] != keys[1]["seed"]


def test_synthetic_cases_made_together_equal_those_made_one_by_one(seg_runs, monkeypatch):
    """batch_scans 3: the three cases' lesions share the inpainter's calls (fewer calls, as many patches) and each
    case is the one made alone."""
    import shutil

    dataset = open_preprocessed(TINY.dataset_id)
    train_cases = json.loads((fold_folder(seg_runs, "sphere") / "training_summary.json").read_text())["train_cases"]
    calls = count_inpaint_calls(monkeypatch)
    seed = DEFAULT_SEED + 5
    folder = synthetic_folder(dataset, "sphere", 0, seed)
    made, patches = {}, {}
    for batch in (1, 3):
        shutil.rmtree(folder, ignore_errors=True)
        calls.clear()
        result = make_synthetic_cases(dataset, 0, "sphere", 3, train_cases, plans_sha256(dataset.plans), seed=seed,
                                      batch_scans=batch)
        assert result.made == 3
        patches[batch] = list(calls)
        made[batch] = [(load_array(f"{c.stem}.b2nd"), load_array(f"{c.stem}_seg.b2nd")) for c in result.cases]
    assert sum(patches[3]) == sum(patches[1]) > 0 and len(patches[3]) < len(patches[1])
    for (images, seg), (images_together, seg_together) in zip(made[1], made[3]):
        np.testing.assert_allclose(images_together, images, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(seg_together, seg)
    assert not np.array_equal(made[1][0][1], made[1][1][1])


def test_generators_of_another_split_are_refused(seg_runs):
    dataset = open_preprocessed(TINY.dataset_id)
    with pytest.raises(LesiongenError, match="other cases than this fold's training split"):
        make_synthetic_cases(dataset, 0, "diffmask", 5, ["demo_000"], plans_sha256(dataset.plans))


def test_no_validation_case_reaches_a_generator(seg_runs):
    seg_training = json.loads((fold_folder(seg_runs, "diffmask") / "training_summary.json").read_text())
    for name in ("spheremask", "unetmask", "diffmask", "ganmask", "inpaint"):
        summary = json.loads((seg_runs["results"] / TINY_NAME / f"{name}__lesiongenPlans" / "fold_0" /
                              "training_summary.json").read_text())
        assert not set(summary["train_cases"]) & set(seg_training["val_cases"])


def test_unknown_strategy_is_a_one_line_error(seg_runs, capsys):
    assert train("seg", "0", "--steps", "1", "--synthetic", "magic") == 1
    assert "unknown synthetic strategy 'magic'" in capsys.readouterr().err


def test_compare_lists_every_strategy_with_paired_difference(seg_runs, tmp_path):
    assert compare_cli.main(["-d", str(TINY.dataset_id), "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "comparison.json").read_text())
    rows = report["rows"]
    assert [r["strategy"] for r in rows] == [variant(s) for s in STRATEGIES]
    assert rows[0]["dice_vs_none"] == [None, None]
    dice = {s: json.loads((fold_folder(seg_runs, s) / "summary.json").read_text())["mean"]["1"]["mean"]["dice"]
            for s in STRATEGIES}
    for row in rows:
        strategy = row["strategy"].split("_r")[0]
        assert row["dice"][0] == pytest.approx(dice[strategy])  # one fold: the mean is that fold's value
        if strategy != "none":
            assert row["dice_vs_none"][0] == pytest.approx(dice[strategy] - dice["none"])
            # over the validation cases, from each case's score in the folds' summaries
            per_case = {s: json.loads((fold_folder(seg_runs, s) / "summary.json").read_text())["per_case"]
                        for s in (strategy, "none")}
            differences = [per_case[strategy][c]["1"]["dice"] - per_case["none"][c]["1"]["dice"]
                           for c in per_case["none"]]
            paired = row["paired_vs_none"]["dice"]
            assert paired["n_cases"] == len(differences) > 0
            assert paired["mean"] == pytest.approx(float(np.mean(differences)))
    for strategy in STRATEGIES:  # every seg model the table used, by checksum
        record = report["provenance"]["models"][variant(strategy)]["0"]
        assert record["sha256"] == sha256_file(fold_folder(seg_runs, strategy) / "checkpoint_final.pt")
    table = (tmp_path / "comparison.md").read_text()
    assert all(f"| {variant(s)} |" in table for s in STRATEGIES)
    assert report["answer"] and "## Answer" in table and report["answer"][0] in table
    assert (tmp_path / "comparison.csv").read_text().count("\n") == len(STRATEGIES) + 1


def test_copy_paste_donors_come_from_the_fold_training_cases_only(tiny_preprocessed):
    from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits

    dataset = open_preprocessed(TINY.dataset_id)
    train_cases, _ = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    made = make_synthetic_cases(dataset, 0, "copy_paste", 8, train_cases, plans_sha256(dataset.plans), seed=7)
    donors = [lesion["donor_case"] for case in made.cases
              for lesion in json.loads(open(f"{case.stem}.json").read())["lesion_records"]]
    assert len(donors) >= 20 and set(donors) <= set(train_cases)
    assert len(set(donors)) == len(train_cases)  # every training case donates; no other case does


def test_realmask_paints_copy_paste_lesions_where_copy_paste_pastes_them(tiny_preprocessed):
    """Same seed: realmask's label map is copy_paste's (same donors, shapes, places); only the look differs, and it
    is the inpainter's (here one that writes +5 into the mask and nothing else)."""
    from lesiongen.inference.synthesis import run_jobs
    from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits
    from lesiongen.training.synthetic import _healthy, _maker

    class MarkingInpainter:
        margin_voxels = 0

        def inpaint(self, images, masks, mode, seed=0, schedule=None, brain=None):
            return np.where(masks[:, None] > 0, 5.0, images).astype(images.dtype)

    dataset = open_preprocessed(TINY.dataset_id)
    train_cases, _ = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    images, brain, tissue = _healthy(dataset, dataset.case_ids("healthy")[0])
    (pasted, pasted_label, pasted_records), (painted, painted_label, painted_records) = run_jobs(
        [_maker(dataset, "copy_paste", train_cases, {})(images, brain, tissue, 3),  # the strategies' own makers
         _maker(dataset, "realmask", train_cases, {"inpainter": MarkingInpainter()})(images, brain, tissue, 3)])
    assert len(painted_records) >= 2
    assert [(r["donor_case"], r["centre_model_voxel"]) for r in painted_records] == \
        [(r["donor_case"], r["centre_model_voxel"]) for r in pasted_records]
    np.testing.assert_array_equal(painted_label, pasted_label)
    assert np.array_equal(painted != images, np.broadcast_to(painted_label > 0, images.shape))
    assert np.all(painted[:, painted_label > 0] == 5.0)
    assert (pasted != images).sum() > (painted != images).sum()  # copy_paste also blends a carved margin


def test_realmask_leaves_the_tissue_its_lesions_avoid_as_it_was(tiny_preprocessed):
    """An inpainter that paints the whole edit region (mask and a 1-voxel margin): realmask's margin stays off the
    tissue the fold's lesions avoid (the demo's CSF), as generated lesions' margins do."""
    from lesiongen.diffusion.inpainting import edit_region
    from lesiongen.inference.placement import lesion_tissue_classes
    from lesiongen.inference.synthesis import run_jobs
    from lesiongen.planning.priors import fold_sphere_priors
    from lesiongen.preprocessing.splits import fold_cases, load_or_create_splits
    from lesiongen.training.synthetic import _healthy, _real_mask_maker

    class SpillingInpainter:
        margin_voxels = 1

        def inpaint(self, images, masks, mode, seed=0, schedule=None, brain=None):
            region = np.stack([edit_region(m > 0, 1) for m in masks])
            return np.where(region[:, None], 5.0, images).astype(images.dtype)

    dataset = open_preprocessed(TINY.dataset_id)
    train_cases, _ = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    allowed = lesion_tissue_classes(fold_sphere_priors(dataset.fingerprint, train_cases, dataset.plans)["1"])
    images, brain, tissue = _healthy(dataset, dataset.case_ids("healthy")[0])
    avoided = ~np.isin(tissue, allowed)
    touched = 0
    for seed in range(4):
        painted, label, _ = run_jobs([_real_mask_maker(dataset, train_cases, SpillingInpainter())(
            images, brain, tissue, seed)])[0]
        beside = edit_region(label > 0, 1) & ~(label > 0)
        touched += int((beside & avoided & brain).sum())
        np.testing.assert_array_equal(painted[:, avoided & (label == 0)], images[:, avoided & (label == 0)])
        assert (painted[:, beside & ~avoided] == 5.0).all()  # the rest of the margin is painted
    assert touched > 0  # some margins did reach the avoided tissue


def test_segmentation_batches_depend_on_the_batch_number_alone(tiny_preprocessed):
    """A run resumed at step k sees the batches k, k+1 ... of an uninterrupted run, with or without workers."""
    from lesiongen.training.seg_data import SegCase, SegPatchLoader, augmentation, batch_stream

    dataset = open_preprocessed(TINY.dataset_id)
    cases = [SegCase(c, dataset.data_folder / "training" / c) for c in dataset.case_ids()]
    patch = dataset.plans.stages["segmentation"].patch_size

    def batches(first: int, count: int, workers: int = 0) -> list[np.ndarray]:
        loader = SegPatchLoader(cases, [], patch, 2, 0.0, seed=5, first_batch=first, n_workers=workers)
        stream = batch_stream(loader, augmentation(patch, False), workers)
        out = [next(stream)["data"] for _ in range(count)]
        stream.close()
        return out

    straight = batches(0, 5)
    resumed = batches(3, 2)
    for a, b in zip(straight[3:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(straight[0], straight[1])
    for a, b in zip(straight, batches(0, 5, workers=2)):
        np.testing.assert_array_equal(a, b)


def test_synthetic_share_fades_linearly_after_its_start():
    from lesiongen.training.seg_data import SyntheticShare

    fading = SyntheticShare(0.6, total_steps=10, fade_start=0.5)
    # steps 0-5 (progress <= 0.5): the whole share; then 0.6 x (1 - step / 10) / 0.5
    assert [fading.at(step) for step in range(10)] == pytest.approx([0.6] * 6 + [0.48, 0.36, 0.24, 0.12])
    assert fading.mean == pytest.approx(0.45)  # 0.6 x (0.5 + 0.5 / 2)
    constant = SyntheticShare(0.6, total_steps=10)
    assert [constant.at(step) for step in (0, 9, 12)] == [0.6, 0.6, 0.6] and constant.mean == 0.6


def test_segmentation_batches_draw_synthetic_cases_at_their_step_s_share(tiny_preprocessed, monkeypatch):
    """All synthetic at the first step of a full share, all real once the fade has reached 0."""
    from lesiongen.training.seg_data import SegCase, SegPatchLoader, SyntheticShare

    dataset = open_preprocessed(TINY.dataset_id)
    folder = dataset.data_folder / "training"
    ids = dataset.case_ids()
    real, synthetic = [SegCase(ids[0], folder / ids[0])], [SegCase(ids[1], folder / ids[1], synthetic=True)]
    drawn: list[bool] = []
    arrays = SegCase.arrays
    monkeypatch.setattr(SegCase, "arrays", lambda case: drawn.append(case.synthetic) or arrays(case))
    share = SyntheticShare(1.0, total_steps=4, fade_start=0.5)
    for step, expected in ((0, True), (4, False)):
        drawn.clear()
        loader = SegPatchLoader(real, synthetic, dataset.plans.stages["segmentation"].patch_size, 3, share, seed=2,
                                first_batch=step)
        next(loader)
        assert drawn == [expected] * 3, step


def test_seg_records_the_fade_and_refuses_a_start_outside_0_1_or_a_balanced_start_it_cannot_use(tiny_preprocessed):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    # a seed of its own: its synthetic cases (copy_paste needs no trained model) are no other test's
    trainer = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu",
                                   TrainingOptions(total_steps=2, seed=77), strategy="copy_paste")
    trainer.apply_settings({"synthetic_ratio": 0.33, "synthetic_fade_start": 0.5})
    trainer.load_training_data()
    trainer.batches.close()
    share = 0.33 / 1.33
    assert trainer.extra["synthetic_share_of_samples"] == pytest.approx(share)
    assert trainer.extra["synthetic_share_over_the_run"] == pytest.approx(share * 0.75)
    with pytest.raises(LesiongenError, match="synthetic_fade_start=1.5"):
        trainer.apply_settings({"synthetic_fade_start": 1.5})
    with pytest.raises(LesiongenError, match="balanced_ce_until=-0.1: a fraction of the steps"):
        trainer.apply_settings({"synthetic_fade_start": 0.5, "balanced_ce_until": -0.1})
    with pytest.raises(LesiongenError, match="balanced_ce_until: only with the dice_ce loss; weighted has its own"):
        trainer.apply_settings({"balanced_ce_until": 0.5, "loss": "weighted"})


class _QuarterLesion(torch.nn.Module):
    """A network whose every voxel says lesion with probability 1/4: plain cross-entropy then depends on the batch's
    lesion fraction, the class-balanced one is (ln 4 + ln 4/3) / 2 whatever it is."""

    def forward(self, x):
        logits = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        logits[:, 1] = -np.log(3)
        return logits


@pytest.mark.parametrize("settings", [{"balanced_ce_until": 0.0}, {"balanced_ce_until": 1.0}, DEMO_SEG_SETTINGS],
                         ids=["plain", "balanced", "lesiongen_demo"])
def test_seg_training_loss_uses_the_balanced_start(tiny_preprocessed, settings):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    trainer = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=10))
    trainer.apply_settings(settings)
    trainer.initialize()
    trainer.load_training_data()
    trainer.trained["unet"] = _QuarterLesion()
    _, parts = trainer.training_loss()  # step 0: all balanced when until > 0
    trainer.batches.close()
    balanced = (np.log(4) + np.log(4 / 3)) / 2
    if settings["balanced_ce_until"]:
        assert parts["ce"] == pytest.approx(balanced, abs=1e-5)
    else:  # plain: background voxels, at -ln 3/4 each, outnumber the lesion's
        assert parts["ce"] < balanced - 0.1


def test_seg_learns_from_a_seeded_share_of_the_real_cases_with_real_data_only(tiny_preprocessed, caplog):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    def trainer(strategy: str, seed: int, settings: dict):
        made = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu",
                                    TrainingOptions(total_steps=2, seed=seed), strategy=strategy)
        made.apply_settings(settings)
        return made

    full = trainer("none", 0, {})
    half = trainer("none", 0, {"real_case_fraction": 0.5})
    assert len(full.train_cases) == 3 and len(half.train_cases) == 2  # fold 0 of 4 cases; 1.5 rounds up
    assert set(half.train_cases) < set(full.train_cases) and half.val_cases == full.val_cases
    assert half.settings()["real_case_fraction"] == 0.5
    half.apply_settings({"real_case_fraction": 0.5})
    assert len(half.train_cases) == 2  # a share of the fold's cases, not of the share already taken
    assert len({tuple(trainer("none", seed, {"real_case_fraction": 0.34}).train_cases) for seed in range(8)}) > 1
    with caplog.at_level(logging.INFO, logger="lesiongen.training"):
        half.load_training_data()
    half.batches.close()
    assert "2 real + 0 synthetic (none) training cases" in caplog.text  # the share is what it learns from
    with pytest.raises(LesiongenError, match="only with --synthetic none"):
        trainer("copy_paste", 0, {"real_case_fraction": 0.5})
    with pytest.raises(LesiongenError, match="real_case_fraction=0"):
        trainer("none", 0, {"real_case_fraction": 0})


def test_seg_models_from_before_the_fade_are_stale_unless_they_had_nothing_to_fade(seg_runs, monkeypatch):
    """A seg model trained before the fade drew its synthetic cases at a constant share: with synthetic cases it is
    not what the default (a fade) makes now; a real-only model is."""
    from lesiongen.models import checkpoint
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    def trainer(strategy: str, settings: dict):
        made = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=2),
                                    strategy=strategy)
        made.apply_settings(settings)
        return made

    sphere = trainer("sphere", {"synthetic_ratio": 0.33, "mirror_validation": False})
    none = trainer("none", {"synthetic_ratio": 0.33})
    assert sphere.stale_reason() is None and none.stale_reason() is None
    load = checkpoint.load_checkpoint

    def before_the_fade(path):
        state = load(path)
        state["provenance"]["settings"].pop("synthetic_fade_start", None)
        return state

    monkeypatch.setattr(checkpoint, "load_checkpoint", before_the_fade)
    assert sphere.stale_reason() == "settings: synthetic_fade_start is 1.0, 0.5 asked"  # only what differs
    assert none.stale_reason() is None
    with pytest.raises(LesiongenError, match="no synthetic cases to fade"):
        none.apply_settings({"synthetic_fade_start": 0.5})


def test_seg_resume_is_exact(seg_runs, tmp_path, monkeypatch):
    """Interrupted after 2 of 4 steps and continued with --c: the same weights as 4 uninterrupted steps."""
    from lesiongen.models.checkpoint import load_checkpoint
    from lesiongen.training.base import Trainer

    args = ["seg", "1", "--steps", "4", "--save_every", "2"]
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "straight"))
    assert train(*args) == 0
    straight = load_checkpoint(tmp_path / "straight" / TINY_NAME / "seg_none__lesiongenPlans" / "fold_1" /
                               "checkpoint_final.pt")
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "resumed"))
    step = Trainer._train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    assert train(*args) == 130
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert train(*args, "--c") == 0
    resumed = load_checkpoint(tmp_path / "resumed" / TINY_NAME / "seg_none__lesiongenPlans" / "fold_1" /
                              "checkpoint_final.pt")
    assert resumed["history"]["loss"] == straight["history"]["loss"]
    for key, tensor in straight["networks"]["unet"].items():
        assert torch.equal(tensor, resumed["networks"]["unet"][key]), key


def test_a_copied_results_folder_is_checked_against_the_models_it_holds_now(seg_runs, tmp_path, monkeypatch):
    """The recorded checkpoint paths of a copied results folder lead back to the original's unchanged models; a
    model retrained in the copy must still make the seg runs that used it stale."""
    import shutil

    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    def reason():
        trainer = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=2),
                                       strategy="sphere")
        trainer.apply_settings({"synthetic_ratio": 0.33, "mirror_validation": False})
        return trainer.stale_reason()

    assert reason() is None
    copy = tmp_path / "results"
    shutil.copytree(seg_runs["results"], copy)
    monkeypatch.setenv("lesiongen_results", str(copy))
    assert reason() is None  # copied as it was: still up to date
    inpainter = copy / TINY_NAME / "inpaint__lesiongenPlans" / "fold_0" / "checkpoint_final.pt"
    with open(inpainter, "ab") as handle:  # as if retrained in the copy
        handle.write(b"\0")
    assert reason() == f"the inpainter it used ({inpainter}) has changed since"


def test_a_missing_generator_is_named_with_the_command_that_trains_it(seg_runs):
    from lesiongen.training.synthetic import strategy_checkpoints

    dataset = open_preprocessed(TINY.dataset_id)
    assert set(strategy_checkpoints(dataset, 1, "sphere")) == {"mask_generator", "inpainter"}
    assert strategy_checkpoints(dataset, 1, "copy_paste") == {}
    with pytest.raises(LesiongenError, match=f"run lesiongen_train {TINY_NAME} spheremask 1$"):
        make_synthetic_cases(dataset, 1, "sphere", 1, ["demo_000"], plans_sha256(dataset.plans))


class _Constant:
    """A segmenter that says ``label`` everywhere, whatever the scan."""

    label_values = [0, 1]

    def __init__(self, label: int):
        self.label = label

    def predict_probabilities(self, data, mirror=False):
        probabilities = np.zeros((2, *data.shape[1:]), dtype=np.float32)
        probabilities[self.label] = 1.0
        return probabilities


def test_seg_validation_that_finds_no_lesion_says_so(tiny_preprocessed, caplog):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.registry import trainer_class

    trainer = trainer_class("seg")(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=2))
    with caplog.at_level(logging.WARNING, logger="lesiongen.training"):
        trainer.validate_cases(_Constant(0))  # all background: every validation lesion missed
    summary = json.loads((trainer.output_folder / "summary.json").read_text())
    assert summary["found_no_lesion"] is True
    assert any(case["1"]["lesion_recall"] == 0 for case in summary["per_case"].values())  # cases with lesions
    assert "found no lesion in any validation case" in caplog.text and "balanced_ce_until=0.5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lesiongen.training"):
        trainer.validate_cases(_Constant(1))  # all lesion: poor, but it finds them
    assert json.loads((trainer.output_folder / "summary.json").read_text())["found_no_lesion"] is False
    assert "found no lesion" not in caplog.text
