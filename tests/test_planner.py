"""The planner on synthetic fingerprints: spacing rules, anisotropy, patch/batch sizes, priors, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from lesiongen.fingerprint.fingerprint import CaseFingerprint, DatasetFingerprint, IntensityProperties
from lesiongen.fingerprint.lesions import LesionComponent
from lesiongen.io.dataset import DatasetInfo
from lesiongen.planning import channels, topology
from lesiongen.planning.planner import plan_dataset, target_spacing
from lesiongen.planning.plans import (CT, DEFAULT_SAMPLING, FEW_STEP_SAMPLING, LEGACY_PLANS_FILE, PLANS_NAME, ZSCORE,
                                      StagePlan, load_plans, plans_file_name, plans_path, save_plans)
from lesiongen.planning.priors import fit_beta, fit_lognormal

from conftest import BENCHMARKS


def _lesion(radius: float, centre, tissue: int = 2) -> LesionComponent:
    voxels = int(4 / 3 * np.pi * radius**3)
    return LesionComponent(
        label=1, voxel_count=voxels, volume_mm3=float(voxels), bounding_radius_mm=radius,
        centroid_voxel=list(map(float, centre)), centroid_relative=[0.5, 0.4, 0.6],
        extent_voxels=[int(2 * radius)] * 3, extent_mm=[2 * radius] * 3,
        semi_axes_mm=[radius, 0.8 * radius, 0.6 * radius], tissue_class=tissue,
        contrast=[2.0, -1.0], intensity_ratio=[1.5, 0.7],
    )


def _fingerprint(spacings, shapes, channel_names=None, radii=(2.0, 3.0, 4.0, 6.0)) -> DatasetFingerprint:
    cases = []
    for i, (sp, sh) in enumerate(zip(spacings, shapes)):
        lesions = [_lesion(r, (sh[0] / 2, sh[1] / 2 + 10 * k, sh[2] / 2), tissue=2 if k else 1)
                   for k, r in enumerate(radii)]
        cases.append(CaseFingerprint(
            case_id=f"c{i}", spacing=list(sp), shape_before_crop=list(sh), shape_after_crop=list(sh),
            crop_bbox=[[0, s] for s in sh], relative_size_after_crop=0.6, brain_fraction_after_crop=0.7,
            lesion_count=len(lesions), lesion_count_per_class={"1": len(lesions)},
            total_lesion_volume_mm3=float(sum(l.volume_mm3 for l in lesions)), lesions=lesions,
        ))
    channel_names = channel_names or {"0": "T1", "1": "FLAIR"}
    props = IntensityProperties(100.0, 90.0, 20.0, -1000.0, 3000.0, 400.0, -50.0)
    return DatasetFingerprint(
        dataset_name="Dataset900_Test", lesiongen_version="test", input_signature="x",
        channel_names=channel_names, lesion_labels=[1], tissue_labels={"GM": 1, "WM": 2, "CSF": 3},
        has_tissue_maps=True, spacings=[list(s) for s in spacings], shapes_after_crop=[list(s) for s in shapes],
        median_relative_size_after_cropping=0.6, median_brain_fraction_after_cropping=0.7,
        foreground_intensity_properties_per_channel={k: props for k in channel_names},
        brain_intensity_properties_per_channel={k: props for k in channel_names},
        cases=cases,
    )


def _info(channel_names=None) -> DatasetInfo:
    return DatasetInfo(channel_names=channel_names or {"0": "T1", "1": "FLAIR"},
                       labels={"background": 0, "lesion": 1}, num_training=4, file_ending=".nii.gz")


def test_isotropic_target_spacing_is_the_median():
    spacings = [[1.0, 1.0, 1.0], [1.2, 0.9, 0.9], [0.8, 1.1, 1.0]]
    spacing, anisotropic, _ = target_spacing(spacings, [[150, 200, 180]] * 3)
    assert spacing == pytest.approx([1.0, 1.0, 1.0])
    assert not anisotropic


def test_anisotropic_target_spacing_uses_the_10th_percentile_of_the_coarse_axis():
    z = [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5]
    spacings = [[s, 0.5, 0.5] for s in z]
    shapes = [[30, 400, 400]] * len(z)
    spacing, anisotropic, notes = target_spacing(spacings, shapes)
    assert anisotropic
    assert spacing[0] == pytest.approx(np.percentile(z, 10))
    assert spacing[1:] == pytest.approx([0.5, 0.5])
    assert any("anisotropic" in n for n in notes)


def test_anisotropic_spacing_but_many_slices_keeps_the_median():
    # nnU-Net's rule needs both: coarse spacing and few voxels along that axis
    spacings = [[s, 0.5, 0.5] for s in (4.0, 5.0, 6.0)]
    _, anisotropic, _ = target_spacing(spacings, [[300, 400, 400]] * 3)
    assert not anisotropic


def test_plan_on_anisotropic_data_avoids_pooling_the_thick_axis_first():
    spacings = [[5.0, 0.6, 0.6]] * 6
    shapes = [[28, 380, 380]] * 6
    plans = plan_dataset(_fingerprint(spacings, shapes), _info(), gpu_memory_target_gb=8)
    assert plans.anisotropic
    seg = plans.stages["segmentation"]
    kwargs = seg.networks["unet"].kwargs
    assert kwargs["kernel_sizes"][0][0] == 1 and kwargs["kernel_sizes"][0][1:] == [3, 3]
    assert kwargs["strides"][1][0] == 1 and kwargs["strides"][1][1:] == [2, 2]
    assert seg.patch_size[0] <= 32 and seg.patch_size[1] > seg.patch_size[0]
    # the patch is divisible by the total stride on every axis
    total = np.prod(np.asarray(kwargs["strides"]), axis=0)
    assert all(p % t == 0 for p, t in zip(seg.patch_size, total))
    assert plans.lesion_patch_size[0] < plans.lesion_patch_size[1]  # fewer voxels along the thick axis


def test_patch_and_batch_fit_the_memory_target():
    spacings = [[1.0, 1.0, 1.0]] * 10
    shapes = [[180, 210, 170]] * 10
    for memory in (4.0, 8.0, 24.0):
        plans = plan_dataset(_fingerprint(spacings, shapes), _info(), gpu_memory_target_gb=memory)
        seg = plans.stages["segmentation"]
        assert seg.batch_size >= 2
        assert seg.estimated_memory_gb <= memory * 1.01
    small = plan_dataset(_fingerprint(spacings, shapes), _info(), gpu_memory_target_gb=4.0).stages["segmentation"]
    large = plan_dataset(_fingerprint(spacings, shapes), _info(), gpu_memory_target_gb=24.0).stages["segmentation"]
    assert np.prod(small.patch_size) * small.batch_size < np.prod(large.patch_size) * large.batch_size


def test_lesion_patch_fits_95_percent_of_lesions_with_margin():
    radii = tuple(np.linspace(1.0, 12.0, 40))
    fingerprint = _fingerprint([[1.0, 1.0, 1.0]] * 3, [[160, 190, 160]] * 3, radii=radii)
    plans = plan_dataset(fingerprint, _info())
    patch_mm = np.asarray(plans.lesion_patch_size) * np.asarray(plans.target_spacing)
    fitting = np.mean([2 * (r + plans.lesion_patch_margin_mm) <= patch_mm.min() for r in radii])
    assert fitting >= 0.95
    assert plans.lesion_fraction_fitting == pytest.approx(fitting)
    assert all(p % 8 == 0 for p in plans.lesion_patch_size)
    # the margin rule: at least 4 mm and two voxels, a quarter of the 95th-percentile radius for large lesions
    assert plans.lesion_patch_margin_mm == 4.0
    large = plan_dataset(_fingerprint([[1.0, 1.0, 1.0]] * 3, [[160, 190, 160]] * 3, radii=(24.0,) * 40), _info())
    assert large.lesion_patch_margin_mm == pytest.approx(6.0)
    thick = plan_dataset(_fingerprint([[3.0, 3.0, 3.0]] * 3, [[60, 70, 60]] * 3, radii=radii), _info())
    assert thick.lesion_patch_margin_mm == pytest.approx(6.0)
    # a context study's override: the given margin, and the patch grown to hold it
    wide = plan_dataset(fingerprint, _info(), lesion_margin_mm=20.0)
    r95 = np.percentile(radii, 95)
    assert wide.lesion_patch_margin_mm == 20.0
    assert min(wide.lesion_patch_size) >= 2 * (r95 + 20.0) > max(plans.lesion_patch_size)


def test_normalisation_follows_channel_names():
    names = {"0": "CT", "1": "FLAIR"}
    plans = plan_dataset(_fingerprint([[1.0] * 3] * 3, [[100] * 3] * 3, names), _info(names))
    ct, flair = plans.normalization
    assert ct.scheme == CT and ct.clip_lower == -50.0 and ct.clip_upper == 400.0 and not ct.use_brain_mask
    assert flair.scheme == ZSCORE and flair.use_brain_mask


def test_sphere_priors_describe_the_lesions():
    radii = (2.0, 3.0, 4.0, 6.0)
    plans = plan_dataset(_fingerprint([[1.0] * 3] * 5, [[120, 140, 120]] * 5, radii=radii), _info())
    prior = plans.sphere_priors["1"]
    assert prior.n_lesions_observed == 20
    assert np.exp(prior.radius_mm.mu) == pytest.approx(np.exp(np.mean(np.log(radii))))
    assert prior.tissue_probability.probabilities == {"1": 0.25, "2": 0.75}
    assert prior.lesions_per_case.probabilities == {"4": 1.0}
    assert sum(prior.lesions_per_patch.probabilities.values()) == pytest.approx(1.0)
    assert sum(prior.location_histogram) == pytest.approx(1.0)
    assert 0.7 < prior.axis_ratio_middle.alpha / (prior.axis_ratio_middle.alpha + prior.axis_ratio_middle.beta) < 0.9
    # the shape bank: every lesion's radius and its own axis ratios, the bandwidth by Silverman's rule
    bank = prior.observed_shapes
    assert sorted(bank.radius_mm) == sorted(radii * 5)
    assert bank.axis_ratio_middle == pytest.approx([0.8] * 20) and bank.axis_ratio_minor == pytest.approx([0.75] * 20)
    logs = np.log(np.array(radii * 5))
    iqr = np.percentile(logs, 75) - np.percentile(logs, 25)
    assert bank.log_bandwidth == pytest.approx(0.5 * 0.9 * min(logs.std(ddof=1), iqr / 1.34) * 20 ** -0.2)
    # each entry's volume is its own lesion's
    assert all(v == int(4 / 3 * np.pi * r**3) for r, v in zip(bank.radius_mm, bank.volume_mm3))


def test_shape_bank_floors_thin_axes_and_keeps_evenly_spaced_ranks(monkeypatch):
    from lesiongen.planning import priors

    lesions = [_lesion(r, (0, 0, 0)) for r in (1.0, 2.0, 3.0, 4.0, 5.0)]
    lesions[0].semi_axes_mm = [1.0, 0.8, 0.0]  # one voxel thick: a zero moment axis
    bank = priors.fit_shape_bank(lesions, floor=0.5)
    assert bank.axis_ratio_minor[0] == pytest.approx(0.5 / 0.8)
    monkeypatch.setattr(priors, "SHAPE_BANK_MAX", 3)
    kept = priors.fit_shape_bank(lesions[::-1], floor=0.5)
    assert kept.radius_mm == [1.0, 3.0, 5.0]
    assert kept.volume_mm3 == [float(int(4 / 3 * np.pi * r**3)) for r in (1, 3, 5)]
    assert priors.fit_shape_bank(lesions[:1], floor=0.5).log_bandwidth == 0.0


def test_plans_round_trip_through_json(tmp_path):
    plans = plan_dataset(_fingerprint([[1.0] * 3] * 3, [[100] * 3] * 3), _info())
    save_plans(plans, tmp_path / "plans.json")
    assert load_plans(tmp_path / "plans.json") == plans


def test_plans_written_before_the_later_prior_fields_keep_their_hash(tmp_path):
    """Models record the plans' sha256; plans without the (later) shape bank, neighbourhood bank and lesion tissue
    must hash as their file did, or every model trained before them would count as stale."""
    import dataclasses
    import json

    from lesiongen.training.base import plans_sha256
    from lesiongen.utilities.provenance import json_sha256

    plans = plan_dataset(_fingerprint([[1.0] * 3] * 3, [[100] * 3] * 3), _info())
    record = dataclasses.asdict(plans)
    for prior in record["sphere_priors"].values():
        del prior["observed_shapes"], prior["neighbourhood"], prior["lesion_tissue"]
    for stage in record["stages"].values():
        del stage["slice_axis"], stage["sampling"]
    (tmp_path / "old.json").write_text(json.dumps(record))
    old = load_plans(tmp_path / "old.json")
    assert old.sphere_priors["1"].observed_shapes is None and old.sphere_priors["1"].lesion_tissue is None
    assert plans_sha256(old) == json_sha256(record)
    assert plans_sha256(plans) != plans_sha256(old)  # a bank is part of what a model was trained with
    # the planned default sampler is what models had before the plans chose it; another one is a new decision
    assert plans.stages["inpainting"].sampling == "default"
    unset = dataclasses.replace(plans)
    unset.stages = {name: dataclasses.replace(stage, sampling=None) for name, stage in plans.stages.items()}
    assert plans_sha256(unset) == plans_sha256(plans)
    unset.stages["inpainting"].sampling = "few_step"
    assert plans_sha256(unset) != plans_sha256(plans)


def test_unet_topology_respects_minimum_feature_map():
    topo = topology.unet_topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert topo.n_stages == 6  # 128 -> 4 after five poolings
    assert topo.features_per_stage[-1] == topology.MAX_FEATURES_3D


# ------------------------------------------------------------------------------------- the 2d configuration


def test_2d_segmentation_configuration_is_planned_for_anisotropic_data_only(tmp_path):
    from lesiongen.models.networks import build_network

    isotropic = plan_dataset(_fingerprint([[1.0, 1.0, 1.0]] * 6, [[150, 180, 150]] * 6), _info())
    assert "segmentation_2d" not in isotropic.stages and not isotropic.anisotropic
    # thick slices along x this time: the 2d stage slices along the coarse axis, whichever it is
    plans = plan_dataset(_fingerprint([[0.6, 0.6, 5.0]] * 6, [[380, 380, 28]] * 6), _info(), gpu_memory_target_gb=8)
    assert plans.anisotropic and {"segmentation", "segmentation_2d"} <= set(plans.stages)  # the 3d one stays
    three, two = plans.stages["segmentation"], plans.stages["segmentation_2d"]
    assert three.slice_axis is None and two.slice_axis == 2
    assert len(two.patch_size) == 2 and two.patch_size[0] > three.patch_size[0]  # in-plane (z, y): whole slices
    kwargs = two.networks["unet"].kwargs
    assert kwargs["conv_op"] == "Conv2d" and kwargs["norm_op"] == "InstanceNorm2d"
    assert all(len(k) == 2 for k in kwargs["kernel_sizes"]) and all(len(s) == 2 for s in kwargs["strides"])
    # batch from the memory estimate (capped at 5 % of the dataset's voxels), within the memory target
    elements = topology.unet_activation_elements(
        topology.UNetTopology(two.patch_size, kwargs["strides"], kwargs["kernel_sizes"], kwargs["features_per_stage"]),
        2, 2)
    dataset_voxels = 6 * 380 * 380 * 28
    assert two.batch_size == topology.unet_batch_size(elements, 8.0, round(0.05 * dataset_voxels /
                                                                           np.prod(two.patch_size)))
    assert two.batch_size > three.batch_size and two.estimated_memory_gb <= 8.0 * 1.01
    network = build_network(two.networks["unet"])
    assert isinstance(network.encoder.stages[0][0].convs[0].conv, torch.nn.Conv2d)
    assert any("2d segmentation configuration" in note for note in plans.notes)
    save_plans(plans, tmp_path / "plans.json")
    assert load_plans(tmp_path / "plans.json") == plans  # slice_axis round-trips


def test_cpu_preset_shrinks_the_2d_configuration_too():
    from lesiongen.planning.presets import CPU_SEG_2D_BATCH, CPU_SEG_VOXELS, SEG_FEATURES, cpu_plans

    plans = plan_dataset(_fingerprint([[5.0, 0.6, 0.6]] * 6, [[28, 380, 380]] * 6), _info())
    cpu = cpu_plans(plans)
    two = cpu.stages["segmentation_2d"]
    assert np.prod(two.patch_size) <= CPU_SEG_VOXELS < np.prod(plans.stages["segmentation_2d"].patch_size)
    assert two.batch_size == min(plans.stages["segmentation_2d"].batch_size, CPU_SEG_2D_BATCH)
    kwargs = two.networks["unet"].kwargs
    assert kwargs["features_per_stage"] == list(SEG_FEATURES[: kwargs["n_stages"]]) and kwargs["conv_op"] == "Conv2d"
    assert two.slice_axis == 0 and two.total_steps == cpu.stages["segmentation"].total_steps
    assert "segmentation_2d" not in cpu_plans(plan_dataset(_fingerprint([[1.0] * 3] * 3, [[100] * 3] * 3),
                                                           _info())).stages


def test_asking_for_2d_of_isotropic_plans_is_one_line():
    from lesiongen.planning.plans import segmentation_stage_name
    from lesiongen.utilities.errors import LesiongenError

    plans = plan_dataset(_fingerprint([[1.0] * 3] * 3, [[100] * 3] * 3), _info())
    assert segmentation_stage_name("3d", plans) == "segmentation"
    with pytest.raises(LesiongenError, match="no 2d segmentation configuration .*anisotropic"):
        segmentation_stage_name("2d", plans)
    with pytest.raises(LesiongenError, match="unknown segmentation configuration '3d_lowres'"):
        segmentation_stage_name("3d_lowres", plans)


def test_diffusion_memory_estimate_matches_the_peak_measured_on_a_gpu():
    """The two diffusion stages' memory estimate against the peak GPU memory the GPU check measured while training
    them at their planned batch and patch (realistic demo: 2 image channels, tissue maps, one lesion class)."""
    report = json.loads((BENCHMARKS / "results" / "gpu_check_cuda_2026-12-04.json").read_text())
    in_channels = {"diffmask": channels.diffmask_input(1, True).total, "inpaint": channels.inpaint_input(2, 1).total}
    for trainer, inputs in in_channels.items():
        stage = report["stages"][f"train_{trainer}"]
        patch = report["stages"]["cpu_reload"]["models"][trainer]["patch_size"]
        measured = stage["performance"]["peak_gpu_allocated_gib"]
        estimate = topology.diffusion_memory_gb(topology.diffusion_topology(patch), patch, inputs, stage["batch_size"])
        assert estimate == pytest.approx(measured, rel=0.03), trainer
        # the batch planned now for the default 8 GB target stays within it by the same estimate
        batch = topology.diffusion_batch_size(topology.diffusion_topology(patch), patch, inputs, 8.0, cap=64)
        assert batch < stage["batch_size"]


def test_intensity_properties_are_nnunets_statistics_of_the_samples():
    """0..1000: mean and median 500, population std, and the 0.5 / 99.5 percentiles 5 and 995 (the CT clip range)."""
    props = IntensityProperties.of(np.arange(1001.0))
    assert (props.mean, props.median, props.min, props.max) == (500.0, 500.0, 0.0, 1000.0)
    assert (props.percentile_00_5, props.percentile_99_5) == pytest.approx((5.0, 995.0))
    assert props.std == pytest.approx(np.sqrt((1001**2 - 1) / 12))


def test_fitted_prior_distributions_by_hand():
    """Beta by the method of moments: 0.1, 0.3, 0.5 have mean 0.3 and variance 0.08 / 3, so alpha + beta =
    0.21 / (0.08 / 3) - 1 = 6.875, alpha 0.3 of it. Log-normal: the mean and population s.d. of the logs, values
    first raised to the floor (which is also the smallest value then)."""
    beta = fit_beta([0.1, 0.3, 0.5])
    assert (beta.alpha, beta.beta) == pytest.approx((0.3 * 6.875, 0.7 * 6.875))
    lognormal = fit_lognormal([1.0, math.e, math.e**2], floor=0.5)
    assert (lognormal.mu, lognormal.sigma) == pytest.approx((1.0, math.sqrt(2 / 3)))
    assert (lognormal.minimum, lognormal.maximum) == pytest.approx((1.0, math.e**2))
    floored = fit_lognormal([0.1, 1.0], floor=0.5)
    assert (floored.mu, floored.minimum) == pytest.approx((math.log(0.5) / 2, 0.5))


def test_the_default_plans_file_wins_over_the_01_name_which_is_read_only_when_alone(tmp_path):
    legacy, current = tmp_path / LEGACY_PLANS_FILE, tmp_path / plans_file_name(PLANS_NAME)
    legacy.write_text("{}")
    assert plans_path(tmp_path) == legacy
    current.write_text("{}")
    assert plans_path(tmp_path) == current
    assert plans_path(tmp_path, "lesiongenPlansCPU") == tmp_path / plans_file_name("lesiongenPlansCPU")


def test_a_diffusion_stage_planned_before_the_sampling_field_samples_with_the_default_preset():
    stage = StagePlan(patch_size=[8, 8, 8], batch_size=2, networks={}, num_epochs=1, iterations_per_epoch=1,
                      estimated_memory_gb=0.1)
    assert stage.planned_sampling("plans") == DEFAULT_SAMPLING
    assert dataclasses.replace(stage, sampling=FEW_STEP_SAMPLING).planned_sampling("plans") == FEW_STEP_SAMPLING


def test_kernels_are_3_along_axes_within_twice_the_finest_spacing_and_1_along_coarser_ones():
    """nnU-Net's rule: a 1.5 mm axis next to 1 mm ones convolves in 3D from the first stage; a 3 mm axis starts with
    a kernel of 1 and gets 3 once in-plane pooling has brought the others to 2 mm."""
    assert topology.unet_topology([1.5, 1.0, 1.0], [64, 64, 64]).kernel_sizes[0] == [3, 3, 3]
    assert topology.unet_topology([3.0, 1.0, 1.0], [64, 64, 64]).kernel_sizes[:2] == [[1, 3, 3], [3, 3, 3]]
