"""Trainer base and the mask generators on a tiny preprocessed dataset, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_NAME, trained_model, write_plans_variant
from lesiongen.cli import evaluate_masks as evaluate_cli
from lesiongen.cli import train as train_cli
from lesiongen.models.conditioning import MaskConditioning
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.models.checkpoint import FINAL, LATEST, load_checkpoint
from lesiongen.preprocessing.lesion_patches import load_lesion_patches
from lesiongen.preprocessing.splits import case_subset, fold_cases, load_or_create_splits, make_splits
from lesiongen.utilities.errors import LesiongenError

DATASET = TINY_NAME
GENERATORS = ("spheremask", "unetmask", "diffmask", "ganmask")


@pytest.fixture(scope="module")
def trained(tiny_preprocessed):
    """Every generator trained 4 steps on fold 0 of the tiny dataset."""
    for name in GENERATORS:
        assert train_cli.main([str(TINY.dataset_id), name, "0", "-device", "cpu", "--steps", "4",
                               "--save_every", "2"]) == 0
    return tiny_preprocessed, None


def fold_folder(folders, trainer: str, fold: str = "0") -> Path:
    return folders["results"] / DATASET / f"{trainer}__lesiongenPlans" / f"fold_{fold}"


def validation_conditioning(dataset, n: int) -> tuple[MaskConditioning, np.ndarray]:
    _, val = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    real = load_lesion_patches(dataset.lesion_patch_folder, val)
    index = np.arange(n) % len(real)
    conditioning = MaskConditioning(brain=real.brain[index], tissue=real.tissue[index], images=real.images[index])
    return conditioning, real.brain[index]


def env_of(folders) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"lesiongen_{k}": str(v) for k, v in folders.items()})
    return env


# ------------------------------------------------------------------------------------------------------ splits
def test_splits_cover_every_case_once_and_are_reused(tmp_path):
    cases = [f"c{i}" for i in range(12)]
    splits = make_splits(cases)
    assert len(splits) == 5
    validated = sorted(c for s in splits for c in s["val"])
    assert validated == sorted(cases)
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
    assert make_splits(cases) == splits  # seeded
    assert make_splits(cases[::-1]) == splits  # the cases' order does not matter, only their ids
    assert make_splits(cases, seed=1) != splits  # shuffled by the seed, not contiguous runs of sorted ids
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["c1"], "val": ["c0"]}] * 2))
    assert load_or_create_splits(tmp_path, cases)[0] == {"train": ["c1"], "val": ["c0"]}  # written once, then read
    assert fold_cases(splits, "all")[0] == sorted(cases)


def test_a_share_of_the_cases_is_seeded_rounded_half_up_and_in_order():
    cases = [f"c{i}" for i in range(5)]
    half = case_subset(cases, 0.5, seed=0)
    assert len(half) == 3 and half == [c for c in cases if c in half]  # 2.5 rounds up; the cases' own order
    assert case_subset(cases, 0.5, seed=0) == half  # seeded
    assert len({tuple(case_subset(cases, 0.5, seed)) for seed in range(10)}) > 1  # each seed its own subset
    assert len(case_subset(cases[:4], 0.5, seed=0)) == 2 and case_subset(cases, 0.01, seed=0) != []
    assert case_subset(cases, 1.0, seed=3) == cases
    for fraction in (0.0, 1.5):
        with pytest.raises(LesiongenError, match="share of the training cases"):
            case_subset(cases, fraction, seed=0)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", GENERATORS)
def test_trainer_writes_final_checkpoint_log_and_progress(trained, name):
    folders, _ = trained
    folder = fold_folder(folders, name)
    assert (folder / FINAL).is_file()
    assert not (folder / LATEST).exists()  # superseded by the final checkpoint
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "finished" in (folder / "training_log.txt").read_text()
    state = torch.load(folder / FINAL, weights_only=True)
    assert state["step"] == (0 if name == "spheremask" else 4)
    summary = json.loads((folder / "training_summary.json").read_text())
    assert set(summary["val_cases"]).isdisjoint(summary["train_cases"])
    if name == "diffmask":
        assert state["model"]["config"]["threshold"] == state["extra"]["calibration"]["threshold"]
        assert state["extra"]["calibration"]["evaluations_per_mask"] == 20
        presets = state["extra"]["calibration"]["presets"]
        assert presets["few_step"]["evaluations_per_mask"] == 4 and presets["default"]["evaluations_per_mask"] == 20
        assert state["model"]["config"]["preset_thresholds"] == {k: v["threshold"] for k, v in presets.items()}
    if name == "ganmask":
        assert state["model"]["config"]["threshold"] == state["extra"]["calibration"]["threshold"]
        assert set(state["discriminator"]) == {"network", "optimizer", "lr_scheduler"}
        assert state["discriminator"]["optimizer"]["state"]  # its Adam moments, for an exact --c


@pytest.mark.parametrize("name", ["unetmask", "diffmask"])
def test_training_summary_records_throughput_after_warm_up(trained, name):
    summary = json.loads((fold_folder(trained[0], name) / "training_summary.json").read_text())
    performance = summary["performance"]
    assert performance["steps_run"] == 4 and performance["warmup_steps"] == 2 and performance["steps_timed"] == 2
    assert performance["samples_per_step"] == summary["provenance"]["batch_size"]
    assert performance["samples_per_second"] == pytest.approx(
        performance["samples_per_step"] / performance["seconds_per_step"])
    assert 0 < performance["steps_timed"] * performance["seconds_per_step"] < performance["loop_seconds"]
    assert performance["amp"] is False and "peak_gpu_allocated_gib" not in performance


def test_diffmask_calibration_reports_progress_in_the_training_log(trained):
    """Calibration samples 32 patches (fewer when the fold has fewer) in batches of the planned batch size, 20
    network evaluations each; the log counts them, and the threshold candidates, up to the total."""
    dataset = open_preprocessed(TINY.dataset_id)
    train, _ = fold_cases(load_or_create_splits(dataset.folder, dataset.case_ids()), 0)
    patches = min(32, len(load_lesion_patches(dataset.lesion_patch_folder, train)))
    calls = -(-patches // dataset.plans.stages["mask_generation"].batch_size) * 20
    log = (fold_folder(trained[0], "diffmask") / "training_log.txt").read_text()
    assert f"calibration sampling: 1/{calls} batched network evaluations" in log
    assert f"calibration sampling: {calls}/{calls} batched network evaluations (100%)" in log
    assert "calibration threshold search: 17/17 thresholds (100%)" in log


@pytest.mark.parametrize("name", GENERATORS)
def test_sample_masks_shape_dtype_brain_and_seed(trained, name):
    dataset = open_preprocessed(TINY.dataset_id)
    generator = trained_model(name)
    conditioning, brain = validation_conditioning(dataset, 3)
    masks = generator.sample_masks(3, conditioning, seed=11)
    assert masks.shape == (3, *dataset.plans.lesion_patch_size)
    assert masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, *dataset.plans.lesion_labels}
    assert not masks[~brain].any()
    np.testing.assert_array_equal(masks, generator.sample_masks(3, conditioning, seed=11))


@pytest.mark.parametrize("name", GENERATORS)
def test_per_mask_seeds_give_each_mask_what_it_gets_alone(trained, name):
    dataset = open_preprocessed(TINY.dataset_id)
    generator = trained_model(name)
    conditioning, _ = validation_conditioning(dataset, 5)
    seeds = [21, 22, 23, 24, 25]
    together = generator.sample_masks(5, conditioning, seed=seeds)
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(together[i], generator.sample_masks(1, conditioning.select(i), seed=seed)[0])
    with pytest.raises(LesiongenError, match="2 seeds for 5 masks"):
        generator.sample_masks(5, conditioning, seed=[1, 2])


@pytest.mark.parametrize("name", ["diffmask", "ganmask"])
def test_per_mask_seeds_draw_each_masks_own_noise(trained, name):
    """The networks' continuous outputs (before thresholding), over more patches than one network batch: with one
    seed per patch, each patch's output is the one it gets alone with its seed, and the seed matters."""
    dataset = open_preprocessed(TINY.dataset_id)
    generator = trained_model(name)
    n = 2 * generator.stage_plan.batch_size + 1
    conditioning, _ = validation_conditioning(dataset, n)
    controls = generator.render_controls(generator.draw_spheres(n, conditioning, np.random.default_rng(0)))
    tissue = conditioning.tissue

    def output(index, seed):
        if name == "diffmask":
            return generator.denoise(controls[index], tissue[index], seed)[0]
        return generator.probabilities(controls[index], tissue[index], seed)

    seeds = list(range(40, 40 + n))
    together = output(slice(None), seeds)
    for i in (0, n - 1):
        np.testing.assert_allclose(together[i], output(slice(i, i + 1), seeds[i])[0], rtol=0, atol=1e-5)
    assert not np.allclose(together[0], output(slice(0, 1), seeds[1])[0], atol=1e-3)


def test_format_1_checkpoints_still_load_with_the_prediction_type_they_recorded(trained, tmp_path):
    """Results written before models were split from trainers (no ``model`` entry) load with their settings."""
    from lesiongen.models.checkpoint import save_checkpoint
    from lesiongen.models.registry import model_from_state

    dataset = open_preprocessed(TINY.dataset_id)
    state = load_checkpoint(fold_folder(trained[0], "diffmask") / FINAL)
    config = state.pop("model")["config"]
    state["format"] = 1
    state["extra"] = {"sphere_priors": config["priors"], "threshold": 0.25}  # no prediction type: trained on noise
    save_checkpoint(state, tmp_path / "old.pt")
    old = model_from_state(load_checkpoint(tmp_path / "old.pt"), dataset.plans)
    assert old.config.schedule.prediction_type == "epsilon" and old.config.threshold == 0.25
    state["extra"]["prediction_type"] = "sample"
    assert model_from_state(state, dataset.plans).config.schedule.prediction_type == "sample"
    conditioning, _ = validation_conditioning(dataset, 2)
    assert old.sample_masks(2, conditioning, seed=3).shape == (2, *dataset.plans.lesion_patch_size)


def test_spheremask_seed_changes_masks_and_lesions_are_not_empty(trained):
    generator = trained_model("spheremask", 0)
    a = generator.sample_masks(6, seed=1)
    b = generator.sample_masks(6, seed=2)
    assert not np.array_equal(a, b)
    assert all(m.any() for m in a)


def test_unetmask_needs_images(trained, capsys):
    generator = trained_model("unetmask", 0)
    with pytest.raises(Exception, match="conditioning images"):
        generator.sample_masks(2, MaskConditioning(), seed=0)


def test_resume_after_kill_reaches_the_same_weights(trained, tmp_path, monkeypatch):
    """SIGKILL a training process between checkpoints, continue with --c: bit-identical to an uninterrupted run."""
    folders, _ = trained
    args = [str(TINY.dataset_id), "inpaint", "0", "-device", "cpu", "--steps", "8", "--save_every", "2"]
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "straight"))
    assert train_cli.main(args) == 0  # in this process: no second start-up cost
    killed = dict(folders, results=tmp_path / "killed")
    latest = fold_folder(killed, "inpaint") / LATEST
    process = subprocess.Popen([sys.executable, "-m", "lesiongen.cli.train", *args], env=env_of(killed),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (fold_folder(killed, "inpaint") / FINAL).exists(), "run finished before it could be killed"
    stopped_at = load_checkpoint(latest)["step"]
    assert 0 < stopped_at < 8
    monkeypatch.setenv("lesiongen_results", str(killed["results"]))
    assert train_cli.main(args + ["--c"]) == 0
    a = load_checkpoint(fold_folder(dict(folders, results=tmp_path / "straight"), "inpaint") / FINAL)
    b = load_checkpoint(fold_folder(killed, "inpaint") / FINAL)
    assert a["step"] == b["step"] == 8
    for part in ("networks", "ema"):
        for key, tensor in a[part]["denoiser"].items():
            assert torch.equal(tensor, b[part]["denoiser"][key]), f"{part} {key} differs after resume"
    assert a["history"]["loss"] == b["history"]["loss"]
    assert a["model"] == b["model"]  # the contrast bank too
    assert [(r["from_step"], r["to_step"]) for r in b["provenance"]["runs"]] == [(0, 8), (stopped_at, 8)]


# ganmask only: its two networks (one output layer unused by the loss) are the hard case for DDP, and the run checks
# everything the base class does for any trainer (world size, steps, each process's generator state); a second
# trainer would cost another 17 s of process start-up for nothing new
@pytest.mark.parametrize("name", ["ganmask"])
def test_torchrun_two_processes_on_cpu(trained, tmp_path, name):
    folders, _ = trained
    run = dict(folders, results=tmp_path / "ddp")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lesiongen.cli.train", str(TINY.dataset_id), name, "0", "-device", "cpu", "--steps", "3"],
        env=env_of(run), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(fold_folder(run, name) / FINAL)
    assert state["world_size"] == 2 and state["step"] == 3
    assert len(state["rng"]) == 2  # each process's generator state, for an exact resume


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("argv, message", [
    (["501", "nosuchtrainer", "0"], "unknown trainer 'nosuchtrainer'"),
    (["501", "spheremask", "9"], "fold 9 does not exist"),
    (["501", "spheremask", "x"], "fold must be 0-4 or 'all'"),
    (["777", "spheremask", "0"], "no dataset folder with ID 777"),
    (["501", "diffmask", "0", "--set", "nonsense=1"], "diffmask has no such setting"),
    (["501", "diffmask", "0", "--set", "lesion_loss_weight=heavy"], "lesion_loss_weight=heavy: expected a number"),
    (["501", "diffmask", "0", "--set", "sampling_steps=2.5"], "sampling_steps=2.5: expected a whole number"),
    (["501", "diffmask", "0", "--set", "calibration_patches=0"], "calibration_patches=0: expected at least 1"),
    (["501", "diffmask", "0", "--set", "choice_draws=0"], "choice_draws=0: expected at least 1"),
])
def test_bad_arguments_give_one_line(trained, capsys, argv, message):
    assert train_cli.main(argv + ["-device", "cpu", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1]


def test_diffmask_calibrates_on_as_many_patches_as_set(tiny_preprocessed):
    """``--set calibration_patches=2`` (what the tiny GPU check uses): every sampler's threshold is fitted on 2
    training patches, one batched evaluation per sampling step."""
    name = write_plans_variant(tiny_preprocessed["preprocessed"] / DATASET, "lesiongenPlansCalibration")
    assert train_cli.main(["501", "diffmask", "0", "-device", "cpu", "--steps", "1", "-p", name,
                           "--set", "calibration_patches=2", "--set", "sampling_steps=3"]) == 0
    fold = tiny_preprocessed["results"] / DATASET / "diffmask__lesiongenPlansCalibration" / "fold_0"
    summary = json.loads((fold / "training_summary.json").read_text())
    assert summary["calibration"]["patches"] == 2
    log = (fold / "training_log.txt").read_text()
    for sampler, evaluations in (("dpm_solver", 3), ("dpm_solver", 20), ("ddim", 4), ("dpm_solver", 4)):
        # own sampler, default and the 4-step candidates of the few-step preset
        assert f"calibration: sampling 2 training patches ({sampler}, {evaluations} network evaluations each)" in log
        assert f"calibration sampling: {evaluations}/{evaluations} batched network evaluations (100%)" in log
    # the few-step sampler is chosen on as many other training patches
    assert "few-step choice: sampling 2 training patches (dpm_solver, 20 network evaluations each)" in log
    assert summary["calibration"]["choice_patches"] == 2


def test_ganmask_on_plans_from_before_ganmask_is_a_one_line_error(tiny_preprocessed, capsys):
    """Plans written before ganmask have no GAN networks: one line says to plan again, no traceback."""
    def without_gan(plans: dict) -> None:
        for name in ("gan_generator", "gan_discriminator"):
            del plans["stages"]["mask_generation"]["networks"][name]

    write_plans_variant(tiny_preprocessed["preprocessed"] / DATASET, "lesiongenPlansOld", without_gan)
    assert train_cli.main(["501", "ganmask", "0", "-device", "cpu", "--steps", "1", "-p", "lesiongenPlansOld"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("error: plans lesiongenPlansOld were written before ganmask and have no GAN "
                                    "networks; run lesiongen_plan_and_preprocess again")


def test_corrupt_checkpoint_is_a_one_line_error(trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert train_cli.main(["501", "unetmask", "0", "-device", "cpu", "--steps", "1",
                           "-pretrained_weights", str(bad)]) == 1
    assert "not a readable lesiongen checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_masks_compares_all_generators(trained, tmp_path):
    out = tmp_path / "evaluation"
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-n", "4", "-device", "cpu",
                              "-o", str(out)]) == 0
    report = json.loads((out / "mask_evaluation.json").read_text())
    assert list(report["methods"]) == list(GENERATORS)
    assert report["timing"]["diffmask"]["network_evaluations_per_mask"] == 20
    assert report["timing"]["ganmask"]["network_evaluations_per_mask"] == 1
    table = (out / "mask_evaluation.md").read_text()
    assert all(f"| {name} |" in table for name in GENERATORS)
    assert (out / "mask_evaluation.png").stat().st_size > 1000
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-n", "4", "-device", "cpu", "-tr", "diffmask",
                              "--sampling", "few_step", "-o", str(tmp_path / "few")]) == 0
    few = json.loads((tmp_path / "few" / "mask_evaluation.json").read_text())
    assert few["sampling"] == "few_step" and few["timing"]["diffmask"]["network_evaluations_per_mask"] == 4


def test_evaluate_masks_gives_zero_distances_for_an_oracle_generator(trained, tmp_path, monkeypatch):
    """A generator that returns the held-out masks themselves must be at distance 0 on every statistic."""
    from lesiongen.evaluation import evaluate_masks
    from lesiongen.models.mask_generators import MaskGenerator
    from lesiongen.utilities.provenance import sha256_file

    captured = {}
    load = evaluate_masks.load_lesion_patches

    def capture(*args):
        captured["real"] = load(*args)
        return captured["real"]

    def oracle(self, n, conditioning=None, seed=0):
        return captured["real"].masks[np.arange(n) % len(captured["real"])].copy()

    monkeypatch.setattr(evaluate_masks, "load_lesion_patches", capture)
    monkeypatch.setattr(MaskGenerator, "sample_masks", oracle)
    assert evaluate_cli.main(["-d", str(TINY.dataset_id), "-f", "0", "-device", "cpu", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "mask_evaluation.json").read_text())
    for name in GENERATORS:
        assert all(v == pytest.approx(0.0, abs=1e-12) for v in report["methods"][name]["wasserstein"].values()), name
        checkpoint = fold_folder(trained[0], name) / FINAL
        assert report["provenance"]["models"][name]["sha256"] == sha256_file(checkpoint)


def test_pretrained_weights_initialise_another_fold(trained):
    folders, _ = trained
    source = fold_folder(folders, "unetmask") / FINAL
    assert train_cli.main([str(TINY.dataset_id), "unetmask", "1", "-device", "cpu", "--steps", "1",
                           "-pretrained_weights", str(source)]) == 0
    log = (fold_folder(folders, "unetmask", "1") / "training_log.txt").read_text()
    assert f"initialised from pretrained weights {source}" in log


def test_fold_priors_count_only_training_lesions(trained):
    dataset = open_preprocessed(TINY.dataset_id)
    generator = trained_model("spheremask")
    train = set(generator.provenance["train_cases"])
    expected = sum(1 for case in dataset.fingerprint.cases if case.case_id in train for lesion in case.lesions
                   if lesion.label == 1)
    assert generator.priors["1"].n_lesions_observed == expected
    assert expected < dataset.plans.sphere_priors["1"].n_lesions_observed  # the validation case's lesions are out


def test_continuing_a_finished_run_to_more_steps_keeps_learning(trained):
    folders, _ = trained
    args = [str(TINY.dataset_id), "unetmask", "all", "-device", "cpu", "--save_every", "2"]
    assert train_cli.main(args + ["--steps", "2"]) == 0
    assert train_cli.main(args + ["--steps", "4", "--c"]) == 0
    state = load_checkpoint(fold_folder(folders, "unetmask", "all") / FINAL)
    assert state["step"] == 4
    assert state["history"]["lr"][1] == 0.0 < state["history"]["lr"][2]  # the schedule restarts over 4 steps
    # ... from where the run stands: after step 3 of 4 the poly LR is base * (1 - 3/4) ** 0.9, not a fresh start
    from lesiongen.training.trainers.unetmask import UNetMaskTrainer

    base = UNetMaskTrainer.learning_rate
    assert state["history"]["lr"][2] == pytest.approx(base * (1 - 3 / 4) ** 0.9, rel=1e-6)


# ------------------------------------------------------------------------------------ weights and provenance
def test_inference_uses_the_ema_weights(trained):
    from lesiongen.models.checkpoint import ema_weights

    state = load_checkpoint(fold_folder(trained[0], "diffmask") / FINAL)
    model = trained_model("diffmask")
    loaded = model.networks["denoiser"].state_dict()
    ema = ema_weights(state["ema"]["denoiser"])
    raw = state["networks"]["denoiser"]
    assert all(torch.equal(loaded[k], ema[k]) for k in loaded)
    assert any(not torch.equal(loaded[k], raw[k]) for k in loaded)  # after 4 steps the average lags the raw weights


def test_checkpoint_provenance_records_what_produced_it(trained):
    import subprocess

    from lesiongen.training.base import plans_sha256

    state = load_checkpoint(fold_folder(trained[0], "unetmask") / FINAL)
    provenance = state["provenance"]
    dataset = open_preprocessed(TINY.dataset_id)
    assert provenance["trainer"] == "unetmask" and provenance["fold"] == "0"
    assert provenance["steps_trained"] == state["step"] == 4 and provenance["seed"] == 12345
    assert provenance["plans_name"] == "lesiongenPlans" and provenance["plans_sha256"] == plans_sha256(dataset.plans)
    assert provenance["lesiongen_version"] == __import__("lesiongen").__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:
        assert provenance["git_commit"] == head.stdout.strip()
    assert [(r["from_step"], r["to_step"]) for r in provenance["runs"]] == [(0, 4)]
    assert set(provenance["train_cases"]).isdisjoint(provenance["val_cases"])
    assert provenance["settings"]["learning_rate"] == 1e-3


def test_continuing_a_finished_run_starts_from_the_raw_weights(trained):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.unetmask import UNetMaskTrainer

    state = load_checkpoint(fold_folder(trained[0], "unetmask") / FINAL)
    trainer = UNetMaskTrainer(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=6))
    trainer.initialize()
    assert trainer.resume() == "resumed" and trainer.step == 4
    weights = trainer.networks["unet"].state_dict()
    assert all(torch.equal(weights[k], state["networks"]["unet"][k]) for k in weights)
    assert trainer.optimizer.state_dict()["state"]  # the optimiser's moments come back too


def test_continuing_with_fewer_or_the_same_steps(trained, capsys):
    folders, _ = trained
    final = fold_folder(folders, "unetmask") / FINAL
    before = final.read_bytes()
    assert train_cli.main([str(TINY.dataset_id), "unetmask", "0", "-device", "cpu", "--steps", "2", "--c"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "already trained 4 steps, more than the 2 requested" in line
    assert train_cli.main([str(TINY.dataset_id), "unetmask", "0", "-device", "cpu", "--steps", "4", "--c"]) == 0
    assert final.read_bytes() == before  # finished as asked: nothing redone, nothing rewritten


def test_stale_reason_notices_other_steps_seed_and_changed_models(trained):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.unetmask import UNetMaskTrainer

    dataset = open_preprocessed(TINY.dataset_id)

    def reason(**options):
        return UNetMaskTrainer(dataset, 0, "cpu", TrainingOptions(**options)).stale_reason()

    assert reason(total_steps=4) is None
    assert "steps_trained is 4, 8 asked" in reason(total_steps=8)
    assert "seed" in reason(total_steps=4, seed=1)
    assert reason(total_steps=4) is None and UNetMaskTrainer(dataset, 3, "cpu").stale_reason() == "not trained yet"


def test_a_setting_recorded_later_is_judged_by_the_value_models_had_before(trained, monkeypatch):
    """A model trained before a setting was recorded counts as trained with today's default, unless the trainer
    names the value such models had (the inpainter's chessboard edge rings): then it is stale."""
    from lesiongen.models import checkpoint
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.unetmask import UNetMaskTrainer

    trainer = UNetMaskTrainer(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=4))
    assert trainer.stale_reason() is None
    load = checkpoint.load_checkpoint

    def before_the_setting(path):
        state = load(path)
        del state["provenance"]["settings"]["learning_rate"]
        return state

    monkeypatch.setattr(checkpoint, "load_checkpoint", before_the_setting)
    assert trainer.stale_reason() is None
    monkeypatch.setattr(UNetMaskTrainer, "settings_before_recorded", {"learning_rate": 0.5})
    assert trainer.stale_reason() == f"settings: learning_rate is 0.5, {trainer.learning_rate!r} asked"


def test_a_fitted_spheremask_is_up_to_date_whatever_steps_are_asked(trained):
    """Nothing in spheremask steps: asked for 1,000 generator steps (lesiongen_benefit), the fitted model must not be
    refitted on every run, taking every seg run that used it along."""
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.spheremask import SphereMaskTrainer

    dataset = open_preprocessed(TINY.dataset_id)
    for steps in (4, 1000, None):
        assert SphereMaskTrainer(dataset, 0, "cpu", TrainingOptions(total_steps=steps)).stale_reason() is None
    assert "seed" in SphereMaskTrainer(dataset, 0, "cpu", TrainingOptions(seed=1)).stale_reason()


# ------------------------------------------------------------------------------------------------------ ganmask
def _ganmask_trainer(steps: int):
    from lesiongen.training.base import TrainingOptions
    from lesiongen.training.trainers.ganmask import GANMaskTrainer

    trainer = GANMaskTrainer(open_preprocessed(TINY.dataset_id), 0, "cpu", TrainingOptions(total_steps=steps))
    trainer.initialize()
    trainer.load_training_data()
    return trainer


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ganmask_discriminator_and_generator_steps_train_only_their_own_network(tiny_preprocessed):
    """The D step leaves the generator without gradient and unchanged; the G step changes neither the
    discriminator's weights nor its gradients (it is frozen while it judges)."""
    trainer = _ganmask_trainer(4)
    generator, discriminator = trainer.networks["generator"], trainer.discriminator
    condition, real, noise = trainer.draw()
    logits = generator(trainer.model.generator_input(noise, condition))
    before = _copy(generator), _copy(discriminator)
    trainer.discriminator_step(condition, real, torch.sigmoid(logits))
    assert all(p.grad is None for p in generator.parameters())
    assert all(torch.equal(v, before[0][k]) for k, v in generator.state_dict().items())
    assert any(not torch.equal(v, before[1][k]) for k, v in discriminator.state_dict().items())
    after_d_step = _copy(discriminator)
    d_grads = [p.grad.clone() for p in discriminator.parameters()]
    trainer.generator_step(condition, real, logits)
    assert all(torch.equal(v, after_d_step[k]) for k, v in discriminator.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(discriminator.parameters(), d_grads))
    assert any(not torch.equal(v, before[0][k]) for k, v in generator.state_dict().items())
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen for its next step


def test_ganmask_noise_draws_give_different_masks(trained):
    """Same spheres and tissue, other noise: other probabilities and, cut at their median, other masks."""
    dataset = open_preprocessed(TINY.dataset_id)
    model = trained_model("ganmask")
    conditioning, _ = validation_conditioning(dataset, 2)
    controls = np.stack([np.pad(np.ones((6, 6, 6), np.uint8), 5)] * 2)  # one sphere-ish cue in each patch
    p1, p2 = (model.probabilities(controls, conditioning.tissue, seed=s) for s in (1, 2))
    assert not np.allclose(p1, p2)
    np.testing.assert_array_equal(p1, model.probabilities(controls, conditioning.tissue, seed=1))
    model.config.threshold = float(np.median(p1))
    assert not np.array_equal(model.binarise(p1, model.config.threshold), model.binarise(p2, model.config.threshold))


def test_ganmask_resume_after_a_crash_reaches_the_same_generator_and_discriminator(tiny_preprocessed, tmp_path,
                                                                                   monkeypatch):
    """A run stopped after its step-1 checkpoint and continued with --c equals an uninterrupted one, bit for bit:
    both networks, both optimisers, the EMA and the loss history."""
    from lesiongen.training.trainers.ganmask import GANMaskTrainer

    args = [str(TINY.dataset_id), "ganmask", "0", "-device", "cpu", "--steps", "2", "--save_every", "1"]
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "straight"))
    assert train_cli.main(args) == 0
    monkeypatch.setenv("lesiongen_results", str(tmp_path / "crashed"))
    save = GANMaskTrainer.save

    def save_then_crash(self, final=False):
        save(self, final)
        raise KeyboardInterrupt  # as if killed right after writing checkpoint_latest.pt at step 1

    with monkeypatch.context() as patch:
        patch.setattr(GANMaskTrainer, "save", save_then_crash)
        assert train_cli.main(args) == 130  # interrupted
    crashed = dict(tiny_preprocessed, results=tmp_path / "crashed")
    assert load_checkpoint(fold_folder(crashed, "ganmask") / LATEST)["step"] == 1
    assert train_cli.main(args + ["--c"]) == 0
    a = load_checkpoint(fold_folder(dict(tiny_preprocessed, results=tmp_path / "straight"), "ganmask") / FINAL)
    b = load_checkpoint(fold_folder(crashed, "ganmask") / FINAL)
    for part in ("networks", "ema"):
        for key, tensor in a[part]["generator"].items():
            assert torch.equal(tensor, b[part]["generator"][key]), f"{part} {key} differs after resume"
    for key, tensor in a["discriminator"]["network"].items():
        assert torch.equal(tensor, b["discriminator"]["network"][key]), f"discriminator {key} differs after resume"
    moments = [(a[o]["state"], b[o]["state"]) for o in ("optimizer",)] + \
        [(a["discriminator"]["optimizer"]["state"], b["discriminator"]["optimizer"]["state"])]
    for first, second in moments:
        assert all(torch.equal(first[i]["exp_avg"], second[i]["exp_avg"]) for i in first)
    assert a["history"]["loss"] == b["history"]["loss"] and a["model"] == b["model"]


def _calibration_stand_in(own, thresholds: dict[str, float], worse: dict[str, dict[str, float]],
                          n_patches: int = 40, student: bool = False):
    """A trainer and model for DiffMaskTrainer.finish_training without networks: ``calibrate`` answers per
    schedule with that sampler's threshold, ``choice_statistics`` with the real lesions' statistics of the patches
    asked for (``choice_draws`` times each) shifted by 0.1 (the default sampler) plus ``worse`` per statistic, so
    that each Wasserstein distance is that shift, after checking that it got the threshold calibrated for that
    sampler and the model running the right network (``student``: the model has a distilled student, named
    ``distilled``)."""
    from types import SimpleNamespace

    from lesiongen.diffusion.presets import FEW_STEP_VARIANTS
    from lesiongen.diffusion.schedules import default_sampling, distillation_schedules, few_step_sampling
    from lesiongen.evaluation.mask_metrics import METRICS, MaskStatistics, mask_statistics
    from lesiongen.preprocessing.lesion_patches import LesionPatches
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer

    named = {"default": default_sampling(own),
             **{variant: few_step_sampling(own, variant=variant) for variant in FEW_STEP_VARIANTS}}
    student_schedule = distillation_schedules(own)[1] if student else None
    if student:
        named["distilled"] = student_schedule
    calls = {"calibrate": [], "distances": []}

    def name_of(schedule):
        return next(n for n, s in named.items() if s == schedule)

    def calibrate(model, schedule, index):
        assert model.network == ("student" if name_of(schedule) == "distilled" else "denoiser")
        calls["calibrate"].append(name_of(schedule))
        return {"threshold": thresholds[name_of(schedule)], "evaluations_per_mask": 4}

    def choice_statistics(model, schedule, threshold, index):
        name = name_of(schedule)
        assert threshold == thresholds[name]
        assert model.network == ("student" if name == "distilled" else "denoiser")
        calls["distances"].append((name, tuple(sorted(index))))
        drawn = mask_statistics(masks[index], [1.0, 1.0, 1.0]).of_patches(
            np.repeat(np.arange(len(index)), trainer.choice_draws))
        return MaskStatistics(**{metric: (drawn.values(metric) + 0.1 + worse.get(name, {}).get(metric, 0.0)).tolist()
                                 for metric in METRICS})

    masks = np.zeros((n_patches, 8, 8, 8), np.uint8)
    masks[:, 1:3, 1:3, 1:3] = 1  # 8 voxels, radius sqrt(3) * 0.5 mm
    masks[::2, 5:7, 5:7, 4:7] = 1  # 12 voxels in every other patch: the real statistics have a spread
    patches = LesionPatches(np.zeros((n_patches, 1, 8, 8, 8), np.float32), masks, np.ones(masks.shape, bool), None,
                            [f"case_{i}" for i in range(n_patches)])
    trainer = SimpleNamespace(calibration_patches=16, choice_draws=4, data=patches, options=SimpleNamespace(seed=0),
                              calibrate=calibrate, choice_statistics=choice_statistics, extra={}, distill_steps=0)
    trainer.calibration_patch_sets = lambda: DiffMaskTrainer.calibration_patch_sets(trainer)
    model = SimpleNamespace(spacing=[1.0, 1.0, 1.0], network="denoiser", STUDENT="student",
                            config=SimpleNamespace(schedule=own, threshold=0.0, preset_thresholds={},
                                                   few_step_variant="ddim_leading",
                                                   student_schedule=student_schedule))
    model.running = lambda network: SimpleNamespace(**{**vars(model), "network": network})
    return (lambda: DiffMaskTrainer.finish_training(trainer, model)), trainer, model, calls


def test_diffmask_stores_the_calibrated_thresholds_it_found():
    """finish_training writes what calibration chose, per sampler, into the model's configuration (the tiny
    training above happens to calibrate to 0.0, the default, so it cannot tell a stored threshold from none)."""
    from lesiongen.diffusion.schedules import ScheduleConfig

    thresholds = {"default": 0.2, "ddim_leading": 0.3, "ddim_trailing": 0.4, "dpm_solver": 0.5}
    finish, trainer, model, _ = _calibration_stand_in(ScheduleConfig(), thresholds, worse={})
    finish()
    assert model.config.threshold == pytest.approx(0.2)  # its own sampler is the default one
    assert model.config.few_step_variant == "ddim_leading"  # all alike: the first variant
    assert model.config.preset_thresholds == pytest.approx({"default": 0.2, "few_step": 0.3})
    assert trainer.extra["calibration"]["patches"] == 16
    assert trainer.extra["calibration"]["few_step_variant"] == "ddim_leading"


def test_diffmask_chooses_the_few_step_sampler_closest_to_the_real_lesions():
    """Of the 4-step samplers, the one whose worst statistic is least further from the real lesions than the
    default sampler's becomes the few-step preset, its threshold with it; a model whose own sampler is the few-step
    preset switches to it too."""
    from lesiongen.diffusion.schedules import ScheduleConfig, few_step_sampling

    thresholds = {"default": 0.2, "ddim_leading": 0.3, "ddim_trailing": 0.4, "dpm_solver": 0.5}
    worse = {"ddim_leading": {"sphericity": 0.05}, "ddim_trailing": {"log_volume_mm3": 0.02, "sphericity": -0.01},
             "dpm_solver": {"lesions_per_patch": 0.5}}
    finish, trainer, model, calls = _calibration_stand_in(ScheduleConfig(), thresholds, worse)
    finish()
    assert model.config.few_step_variant == "ddim_trailing"
    assert model.config.preset_thresholds["few_step"] == pytest.approx(0.4)
    assert model.config.schedule == ScheduleConfig()  # its own (default) sampler is kept
    excess = trainer.extra["calibration"]["few_step_variants"]
    assert excess["ddim_trailing"]["worst_excess"] < excess["ddim_leading"]["worst_excess"]
    assert sorted(calls["calibrate"]) == ["ddim_leading", "ddim_trailing", "default", "dpm_solver"]  # each once
    # the choice is made on 16 other training patches than the thresholds were fitted on, the same for every sampler
    assert sorted(name for name, _ in calls["distances"]) == ["ddim_leading", "ddim_trailing", "default",
                                                               "dpm_solver"]
    choice_patches = {patches for _, patches in calls["distances"]}
    fit, check = trainer.calibration_patch_sets()
    assert choice_patches == {tuple(sorted(check))} and len(check) == len(fit) == 16
    assert not set(check) & set(fit) and not trainer.extra["calibration"]["choice_on_fit_patches"]
    assert trainer.extra["calibration"]["choice_draws"] == 4

    own = few_step_sampling(ScheduleConfig(prediction_type="sample"))
    finish, trainer, model, calls = _calibration_stand_in(own, thresholds, worse)
    finish()
    assert model.config.schedule == few_step_sampling(own, variant="ddim_trailing")
    assert model.config.threshold == pytest.approx(0.4)
    assert sorted(calls["calibrate"]) == ["ddim_leading", "ddim_trailing", "default", "dpm_solver"]


def test_a_distilled_student_competes_for_the_few_step_preset_and_keeps_its_own_threshold():
    """With a student, the distilled sampler (run on the student network) is a fourth, preferred candidate: chosen
    when its worst statistic is the least further, replaced when the others are clearly closer, its threshold stored
    under ``distilled`` either way."""
    from lesiongen.diffusion.schedules import ScheduleConfig

    thresholds = {"default": 0.2, "ddim_leading": 0.3, "ddim_trailing": 0.4, "dpm_solver": 0.5, "distilled": -0.1}
    behind = {"sphericity": 0.03}
    worse = {"ddim_leading": behind, "ddim_trailing": behind, "dpm_solver": behind, "distilled": {"radius_mm": 0.01}}
    finish, trainer, model, calls = _calibration_stand_in(ScheduleConfig(prediction_type="sample"), thresholds, worse,
                                                          student=True)
    finish()
    assert model.config.few_step_variant == "distilled"
    assert model.config.preset_thresholds == pytest.approx({"default": 0.2, "few_step": -0.1, "distilled": -0.1})
    assert sorted(calls["calibrate"]) == ["ddim_leading", "ddim_trailing", "default", "distilled", "dpm_solver"]
    assert model.config.schedule == ScheduleConfig(prediction_type="sample")  # its own sampler stays the default

    worse["distilled"] = {"sphericity": 0.06}  # twice as far behind as the others
    finish, trainer, model, calls = _calibration_stand_in(ScheduleConfig(prediction_type="sample"), thresholds, worse,
                                                          student=True)
    finish()
    assert model.config.few_step_variant == "ddim_leading"
    assert model.config.preset_thresholds == pytest.approx({"default": 0.2, "few_step": 0.3, "distilled": -0.1})
    # the student is preferred, and replaced only because the others are closer in every resample of the patches
    record = trainer.extra["calibration"]
    assert record["preferred"] == "distilled" and "beats_preferred" not in record["few_step_variants"]["distilled"]
    assert record["few_step_variants"]["ddim_leading"]["beats_preferred"] == 1.0


def test_with_few_training_patches_the_few_step_sampler_is_chosen_on_the_fitted_ones():
    """Fewer than MIN_CHOICE_PATCHES left over: the choice reuses the threshold's patches (and says so)."""
    from lesiongen.diffusion.schedules import ScheduleConfig
    from lesiongen.training.trainers.diffmask import MIN_CHOICE_PATCHES

    thresholds = {"default": 0.2, "ddim_leading": 0.3, "ddim_trailing": 0.4, "dpm_solver": 0.5}
    finish, trainer, model, calls = _calibration_stand_in(ScheduleConfig(), thresholds, worse={},
                                                          n_patches=16 + MIN_CHOICE_PATCHES - 1)
    finish()
    fit, check = trainer.calibration_patch_sets()
    assert np.array_equal(fit, check) and {patches for _, patches in calls["distances"]} == {tuple(sorted(fit))}
    assert trainer.extra["calibration"]["choice_on_fit_patches"]


def test_a_short_schedule_diffmask_keeps_the_only_few_step_sampler_it_can_run():
    """A network trained at the leading timesteps only cannot be sampled at others: no other variant (nor the
    default sampler) is calibrated, and its own sampler stays."""
    from lesiongen.diffusion.schedules import (ScheduleConfig, few_step_sampling, sampling_scheduler,
                                               short_schedule)

    few = few_step_sampling(ScheduleConfig(prediction_type="sample"))
    own = short_schedule(few, sampling_scheduler(few).timesteps)
    thresholds = {"ddim_leading": 0.3}
    finish, trainer, model, calls = _calibration_stand_in(own, thresholds, worse={})
    finish()
    assert calls == {"calibrate": ["ddim_leading"], "distances": []}
    assert model.config.schedule == own and model.config.few_step_variant == "ddim_leading"
    assert model.config.preset_thresholds == pytest.approx({"few_step": 0.3})


def test_the_few_step_choice_pools_several_noise_draws_per_patch():
    """Each of 4 patches holds one real lesion; the network makes it in the first of every 3 draws only. Pooled over
    the draws, a third of the masks have a lesion: the lesion-count distance is 2/3 (one draw per patch would give
    0), and each patch's own control and tissue go with each of its draws."""
    from types import SimpleNamespace

    from lesiongen.evaluation.mask_metrics import mask_statistics, wasserstein_distances
    from lesiongen.preprocessing.lesion_patches import LesionPatches
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer

    n, draws = 4, 3
    real = np.zeros((n, 10, 10, 10), np.uint8)
    real[:, 3:6, 3:6, 3:6] = 1
    tissue = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 10, 10, 10), np.uint8)
    patches = LesionPatches(np.zeros((n, 1, 10, 10, 10), np.float32), real, np.ones(real.shape, bool), tissue,
                            [f"case_{i}" for i in range(n)])
    seen = {}

    def denoise(controls, tissue, seed, schedule, progress):
        seen["controls"], seen["tissue"] = controls, tissue
        denoised = np.full((len(controls), 1, 10, 10, 10), -1.0, np.float32)
        denoised[::draws, 0, 3:6, 3:6, 3:6] = 1.0
        return denoised, 20

    trainer = SimpleNamespace(data=patches, controls=real * (1 + np.arange(n)[:, None, None, None]).astype(np.uint8),
                              choice_draws=draws, options=SimpleNamespace(seed=0))
    trainer.denoise_patches = lambda *a, **k: DiffMaskTrainer.denoise_patches(trainer, *a, **k)
    model = SimpleNamespace(binarise=lambda d, t: (d[:, 0] > t).astype(np.uint8), minimum_voxels=lambda: {1: 1},
                            config=SimpleNamespace(lesions_on_controls_only=True), spacing=[1.0, 1.0, 1.0],
                            denoise=denoise)
    schedule = SimpleNamespace(sampler="dpm_solver", num_inference_steps=20, timestep_spacing=None)
    index = np.arange(n)
    drawn = DiffMaskTrainer.choice_statistics(trainer, model, schedule, 0.0, index)
    assert drawn.lesions_per_patch == [1, 0, 0] * n  # each patch's draws in a row
    distances = wasserstein_distances(mask_statistics(real, [1.0, 1.0, 1.0], tissue), drawn)
    assert distances["lesions_per_patch"] == pytest.approx(2 / 3)
    assert distances["log_volume_mm3"] == pytest.approx(0.0)  # the lesions it makes are the real ones
    assert [int(c.max()) for c in seen["controls"]] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert [int(t.max()) for t in seen["tissue"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_diffmask_threshold_search_counts_components_off_the_spheres():
    """The network makes the large real lesion, misses the small one and, below -0.45, grows a one-voxel blob at the
    patch border, off every sphere. The threshold search counts the blob although sampling drops it (near a sphere
    such a blob can join its lesion, which sampling keeps), so the blob's thresholds match the real lesions."""
    from types import SimpleNamespace

    from lesiongen.preprocessing.lesion_patches import LesionPatches
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer

    real = np.zeros((1, 12, 12, 12), np.uint8)
    real[0, 4:7, 4:7, 4:7] = 1
    real[0, 9, 9, 9] = 1
    denoised = np.full((1, 1, 12, 12, 12), -1.0, np.float32)
    denoised[0, 0, 4:7, 4:7, 4:7] = 0.9
    denoised[0, 0, 0, 0, 0] = -0.45
    patches = LesionPatches(np.zeros((1, 1, 12, 12, 12), np.float32), real, np.ones(real.shape, bool), None, ["a"])
    trainer = SimpleNamespace(data=patches, controls=real.copy(), denoise_patches=lambda *a: (denoised, 20))
    model = SimpleNamespace(binarise=lambda d, t: (d[:, 0] > t).astype(np.uint8), minimum_voxels=lambda: {1: 1},
                            config=SimpleNamespace(lesions_on_controls_only=True))
    schedule = SimpleNamespace(sampler="dpm_solver", num_inference_steps=20, timestep_spacing=None)
    result = DiffMaskTrainer.calibrate(trainer, model, schedule, np.array([0]))
    assert result["scores"][-0.5] == pytest.approx(0.0) and result["scores"][-0.4] > 0.5


def test_diffmask_trainer_writes_models_that_keep_only_lesions_on_their_spheres(tiny_preprocessed):
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.trainers.diffmask import DiffMaskTrainer

    trainer = DiffMaskTrainer(open_preprocessed(DATASET), 0, "cpu")
    assert trainer.model_config().lesions_on_controls_only is True
