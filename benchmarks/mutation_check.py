"""Mutation check: break the core algorithms one line at a time and see that the test suite notices.

Each mutant replaces one exact line fragment of lesiongen's source (it must occur exactly once) in a scratch copy
of the repository and runs the tests named for it there (``PYTHONPATH`` points at the copy, so the installed
package is not used). A mutant is *killed* when those tests fail, *survived* when they pass. The unmutated copy
is run first: a failing baseline makes every kill meaningless, so the script stops.

    python benchmarks/mutation_check.py                 # every mutant, ~15-25 min on 2 cores
    python benchmarks/mutation_check.py --only cfg_returns_unconditional repaint_no_known_replacement
    python benchmarks/mutation_check.py --list

Writes ``benchmarks/results/mutation_check_<date>.json`` (or ``--json PATH``) with each mutant's outcome, the
tests it ran, their run time, and provenance (lesiongen version, git commit, dirty flag).
"""

from __future__ import annotations

import argparse
import json
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesiongen.utilities.provenance import code_version  # noqa: E402


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # an exact fragment that occurs once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    origin: str = "own"  # "issue 11": the breaks the review found; "issue 14/15": what those issues added


ALG = "tests/test_algorithms.py"
TRAINER_SETTINGS_TEST = ("tests/test_benefit.py::"
                         "test_a_trainer_setting_reaches_every_training_of_that_trainer_and_no_other")
MUTANTS = (
    # ------------------------------------------------------------------ the breaks the review found (issue 11)
    Mutant("repaint_no_known_replacement", "lesiongen/diffusion/inpainting.py",
           "x = region * x + (1 - region) * known_part", "x = x",
           (f"{ALG}::test_repaint_keeps_the_known_region_correctly_noised_at_every_state",), "issue 11"),
    Mutant("repaint_jump_without_renoise", "lesiongen/diffusion/inpainting.py",
           "x = x * ratio**0.5 + randn() * (1 - ratio) ** 0.5", "x = x",
           (f"{ALG}::test_repaint_jumps_renoise_by_q_xt_given_xs",), "issue 11"),
    Mutant("cfg_returns_unconditional", "lesiongen/diffusion/guidance.py",
           "return unconditioned + scale * (conditioned - unconditioned)", "return unconditioned",
           (f"{ALG}::test_classifier_free_guidance_follows_the_formula_on_a_fake_network",
            f"{ALG}::test_guidance_changes_the_inpainted_lesion"), "issue 11"),
    Mutant("condition_dropout_never_applied", "lesiongen/training/trainers/inpaint.py",
           "unconditioned = rng.random(len(index)) < self.condition_dropout",
           "unconditioned = rng.random(len(index)) < 0.0",
           (f"{ALG}::test_realised_condition_dropout_rate_matches_the_setting",), "issue 11"),
    Mutant("diffmask_control_zeroed", "lesiongen/models/mask_generators.py",
           "parts = [self.encode_control(controls)]", "parts = [self.encode_control(controls * 0)]",
           (f"{ALG}::test_diffmask_masks_follow_the_sphere_control",), "issue 11"),
    Mutant("calibration_constant", "lesiongen/training/trainers/diffmask.py",
           "return min(scores, key=scores.get), scores", "return 0.0, scores",
           (f"{ALG}::test_calibration_picks_the_threshold_that_matches_count_and_volume",), "issue 11"),
    Mutant("calibrated_threshold_not_stored", "lesiongen/training/trainers/diffmask.py",
           'model.config.threshold = details["own"]["threshold"]', "model.config.threshold = 0.0",
           ("tests/test_mask_trainers.py::test_diffmask_stores_the_calibrated_thresholds_it_found",), "issue 11"),
    Mutant("seg_without_dice", "lesiongen/training/trainers/seg.py",
           '"dice": lambda logits, labels: softmax_dice_loss(logits, labels[:, 0]),',
           '"dice": lambda logits, labels: 0 * softmax_dice_loss(logits, labels[:, 0]),',
           (f"{ALG}::test_seg_loss_is_cross_entropy_plus_dice_at_every_resolution",), "issue 11"),
    Mutant("deep_supervision_first_output_only", "lesiongen/training/losses.py",
           "for weight, logits in zip(deep_supervision_weights(len(outputs)), outputs):",
           "for weight, logits in zip(deep_supervision_weights(1), outputs[:1]):",
           (f"{ALG}::test_deep_supervision_weights_every_output",), "issue 11"),
    Mutant("copy_paste_donors_from_all_cases", "lesiongen/training/synthetic.py",
           "return (load_lesion_patches(dataset.lesion_patch_folder, train_cases),",
           "return (load_lesion_patches(dataset.lesion_patch_folder, dataset.case_ids()),",
           ("tests/test_seg.py::test_copy_paste_donors_come_from_the_fold_training_cases_only",), "issue 11"),
    Mutant("inference_without_ema", "lesiongen/models/registry.py",
           "model = model_from_state(state, folder.plans(), device, source=path)",
           'model = model_from_state(state, folder.plans(), device, source=path, weights="networks")',
           ("tests/test_mask_trainers.py::test_inference_uses_the_ema_weights",), "issue 11"),
    # ------------------------------------------------------------------------------------------ own mutants
    Mutant("few_step_not_ending_clean", "lesiongen/diffusion/inpainting.py",
           "set_alpha_to_one=schedule.clean_final_step", "set_alpha_to_one=False",
           (f"{ALG}::test_few_step_repaint_with_an_oracle_x0_network_returns_the_known_image_exactly",)),
    Mutant("few_step_with_resampling_jumps", "lesiongen/diffusion/inpainting.py",
           "n_jumps=0, guidance_scale=1.0,", "n_jumps=1, guidance_scale=1.0,",
           (f"{ALG}::test_few_step_inpainting_evaluates_the_network_at_most_four_times_per_patch",)),
    Mutant("few_step_with_guidance_doubling", "lesiongen/diffusion/inpainting.py",
           "n_jumps=0, guidance_scale=1.0,", "n_jumps=0, guidance_scale=1.5,",
           (f"{ALG}::test_few_step_inpainting_evaluates_the_network_at_most_four_times_per_patch",)),
    Mutant("diffmask_preset_keeps_own_threshold", "lesiongen/models/mask_generators.py",
           "threshold=self.config.preset_thresholds[sampling])", "threshold=self.config.threshold)",
           (f"{ALG}::test_diffmask_switches_sampler_and_threshold_together",)),
    Mutant("fingerprint_volume_ignores_spacing", "lesiongen/fingerprint/lesions.py",
           "volume_mm3=float(count * voxel_volume),", "volume_mm3=float(count),",
           ("tests/test_lesion_geometry.py",)),
    Mutant("lesions_6_connected", "lesiongen/utilities/components.py",
           "CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)",
           "CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 1)",
           ("tests/test_lesion_geometry.py",)),
    Mutant("planner_never_anisotropic", "lesiongen/planning/planner.py",
           "anisotropic = bool(anisotropic_spacing and anisotropic_voxels)", "anisotropic = False",
           ("tests/test_planner.py",)),
    Mutant("fold_priors_use_every_case", "lesiongen/planning/priors.py",
           "train = set(train_cases)", "train = {c.case_id for c in fingerprint.cases}",
           (f"{ALG}::test_fold_priors_count_only_the_folds_training_lesions",)),
    Mutant("sliding_window_uniform_weights", "lesiongen/models/sliding_window.py",
           "weight = _cached_importance_map(patch_size).to(device)",
           "weight = torch.ones(tuple(patch_size), device=device)",
           ("tests/test_sliding_window.py",)),
    Mutant("sliding_window_mirror_not_undone", "lesiongen/models/sliding_window.py",
           "prediction += torch.flip(_first_output(network(torch.flip(x, dims))).float(), dims)",
           "prediction += _first_output(network(torch.flip(x, dims))).float()",
           ("tests/test_sliding_window.py",)),
    Mutant("dice_without_factor_two", "lesiongen/evaluation/segmentation_metrics.py",
           "dice = 1.0 if total == 0 else 2.0 * n_both / total", "dice = 1.0 if total == 0 else n_both / total",
           ("tests/test_segmentation_metrics.py",)),
    Mutant("f1_is_the_mean", "lesiongen/evaluation/segmentation_metrics.py",
           "return 2.0 * precision * recall / (precision + recall)", "return (precision + recall) / 2.0",
           ("tests/test_segmentation_metrics.py",)),
    Mutant("hd95_is_the_median", "lesiongen/evaluation/segmentation_metrics.py",
           "return float(np.percentile(distances, 95))", "return float(np.percentile(distances, 50))",
           ("tests/test_segmentation_metrics.py",)),
    Mutant("small_lesions_are_all_lesions", "lesiongen/evaluation/segmentation_metrics.py",
           "small = ref_sizes * voxel_mm3 < small_lesion_mm3", "small = ref_sizes >= 0",
           ("tests/test_segmentation_metrics.py",)),
    Mutant("volume_difference_reference_minus_prediction", "lesiongen/evaluation/segmentation_metrics.py",
           '"volume_difference_mm3": volume_pred - volume_ref', '"volume_difference_mm3": volume_ref - volume_pred',
           ("tests/test_segmentation_metrics.py",)),
    Mutant("benefit_verdict_by_the_mean", "lesiongen/evaluation/statistics.py",
           'return "helps" if ci_low > 0 else', 'return "helps" if ci_low + ci_high > 0 else',
           ("tests/test_benefit.py::test_the_answer_follows_the_interval_and_names_a_significant_wilcoxon_inside_it",
            "tests/test_compare.py::test_paired_difference_over_validation_cases_and_the_answer")),
    Mutant("compare_pairs_the_wrong_cases", "lesiongen/evaluation/compare.py",
           "np.array([[baseline[c][metric] for c in common]])",
           "np.array([[baseline[c][metric] for c in reversed(common)]])",
           ("tests/test_compare.py::test_paired_difference_over_validation_cases_and_the_answer",)),
    Mutant("placement_ignores_the_neighbourhood", "lesiongen/inference/placement.py",
           "weights = weights * neighbourhood_factor(shares, weights, prior.neighbourhood)",
           "weights = weights * 1.0",
           ("tests/test_placement.py::test_placed_lesions_border_the_tissue_real_ones_border",), "issue 14"),
    Mutant("placement_by_the_real_density_alone", "lesiongen/inference/placement.py",
           "ratio = np.divide(real, placed, out=np.zeros_like(real), where=placed > 0)",
           "ratio = real",
           ("tests/test_placement.py::test_factor_is_the_ratio_of_the_real_to_the_placed_neighbourhood_density",),
           "issue 14"),
    Mutant("shell_shares_include_the_lesion", "lesiongen/fingerprint/lesions.py",
           "shell_tissue = _shares(tissue[crop][shell])",
           "shell_tissue = _shares(tissue[crop][shell | comp])",
           ("tests/test_placement.py::test_fingerprint_records_the_tissue_shares_of_a_lesions_shell",), "issue 14"),
    Mutant("lesion_tissue_counted_per_lesion_not_per_voxel", "lesiongen/planning/priors.py",
           "totals[key] = totals.get(key, 0.0) + share * lesion.voxel_count",
           "totals[key] = totals.get(key, 0.0) + share",
           ("tests/test_placement.py::test_fingerprint_and_prior_record_the_tissue_under_the_lesions",), "issue 14"),
    Mutant("inserted_masks_cover_any_tissue", "lesiongen/inference/placement.py",
           "kept = {int(key) for key, share in prior.lesion_tissue.items() if share >= LESION_TISSUE_MIN_SHARE}",
           "kept = {int(key) for key, share in prior.lesion_tissue.items()}",
           ("tests/test_placement.py::test_inserted_lesions_may_cover_the_tissue_classes_real_lesions_cover",
            f"{ALG}::test_inserted_lesions_and_their_margins_stay_off_tissue_real_lesions_avoid",
            "tests/test_copy_paste.py"), "issue 14"),
    Mutant("inpainted_margin_painted_over_avoided_tissue", "lesiongen/inference/synthesis.py",
           "result = np.where(lesion.keep[None], lesion.image_patch, result)", "result = result",
           (f"{ALG}::test_inserted_lesions_and_their_margins_stay_off_tissue_real_lesions_avoid",), "issue 14"),
    Mutant("pasted_margin_over_avoided_tissue", "lesiongen/inference/copy_paste.py",
           "blended = np.where(paste_into[None], blended, recipient)",
           "blended = np.where(recipient_brain[None], blended, recipient)",
           ("tests/test_copy_paste.py",), "issue 14"),
    Mutant("held_out_fake_masks_on_any_tissue", "lesiongen/evaluation/evaluate_inpainting.py",
           "off = np.zeros(mask.shape, bool) if avoided is None else avoided",
           "off = np.zeros(mask.shape, bool)",
           ("tests/test_inpaint.py::test_fake_masks_lie_on_the_tissue_lesions_may_cover_and_the_rest_is_kept",),
           "issue 14"),
    Mutant("given_masks_paint_over_avoided_tissue", "lesiongen/training/synthetic.py",
           "seed=seed, lesion_priors=priors)", "seed=seed)",
           ("tests/test_seg.py::test_realmask_leaves_the_tissue_its_lesions_avoid_as_it_was",), "issue 14"),
    Mutant("clipped_mask_keeps_its_slivers", "lesiongen/inference/placement.py",
           "kept[ids != int(np.argmax(sizes))] = 0", "kept[ids < 0] = 0",
           ("tests/test_placement.py::test_a_mask_is_kept_off_other_tissue_as_its_largest_piece",
            "tests/test_copy_paste.py"), "issue 14"),
    Mutant("plans_hash_counts_absent_later_fields", "lesiongen/training/base.py",
           'for later in _LATER_PRIOR_FIELDS:', 'for later in _LATER_PRIOR_FIELDS[:1]:',
           ("tests/test_planner.py::test_plans_written_before_the_later_prior_fields_keep_their_hash",)),
    Mutant("euclidean_rings_reach_the_diagonals", "lesiongen/models/inpainter.py",
           "cut = [margin & (distance > k - 1) & (distance <= k) for k in range(1, margin_voxels)]",
           "cut = [margin & (distance > k - 1) & (distance <= 1.8 * k) for k in range(1, margin_voxels)]",
           (f"{ALG}::test_euclidean_rings_cut_the_margin_by_distance_and_keep_its_voxels",), "issue 14"),
    Mutant("edge_bank_not_in_the_configured_rings", "lesiongen/training/trainers/inpaint.py",
           "                                  self.edge_rings)", '                                  "euclidean")',
           ("tests/test_inpaint.py::test_training_wrote_the_edge_steps_of_its_training_lesions",), "issue 14"),
    Mutant("edges_calibrated_in_chessboard_rings", "lesiongen/models/inpainter.py",
           "lesion_any[i] & ~lesion_k, self.config.edge_rings,", 'lesion_any[i] & ~lesion_k, "chessboard",',
           (f"{ALG}::test_inserted_lesions_take_the_edges_of_their_training_lesion_and_their_label_follows_the_mask",),
           "issue 14"),
    Mutant("census_contrast_of_the_wrong_channel", "lesiongen/evaluation/lesion_census.py",
           "contrast = {name: mean([c[i] for c in contrasts])",
           "contrast = {name: mean([c[-1 - i] for c in contrasts])",
           ("tests/test_benefit.py::test_report_counts_the_lesions_of_the_real_and_the_synthetic_training_cases",),
           "issue 14"),
    Mutant("census_lesions_not_per_case", "lesiongen/evaluation/lesion_census.py",
           "lesions_per_case=len(volumes) / len(per_case)", "lesions_per_case=len(volumes)",
           ("tests/test_lesion_census.py",)),
    Mutant("paste_back_without_margin", "lesiongen/inference/scan_space.py",
           "region = edit_region(region, margin_voxels)",
           "region = region",
           ("tests/test_scan_space.py",)),
    Mutant("placement_ignores_tissue", "lesiongen/inference/placement.py",
           "weights = weights * lookup[tissue_in_brain]", "weights = weights",
           (f"{ALG}::test_placement_follows_the_tissue_probabilities",)),
    Mutant("feather_blend_hard_edge", "lesiongen/diffusion/inpainting.py",
           "weight = np.clip(1.0 - distance / (margin_voxels + 1), 0.0, 1.0).astype(known.dtype)",
           "weight = (distance == 0).astype(known.dtype)",
           ("tests/test_inpaint.py::test_feather_blend_keeps_far_voxels_bit_identical",)),
    Mutant("small_components_kept", "lesiongen/models/conditioning.py",
           "small = np.flatnonzero(sizes < minimum)", "small = np.flatnonzero(sizes < 0)",
           (f"{ALG}::test_small_components_are_dropped_per_class",)),
    Mutant("derive_seed_ignores_later_parts", "lesiongen/utilities/seeding.py",
           "state = np.random.SeedSequence([_entropy(p) for p in parts])",
           "state = np.random.SeedSequence([_entropy(p) for p in parts[:1]])",
           (f"{ALG}::test_derive_seed_is_stable_distinct_and_in_range",)),
    Mutant("seg_batches_not_reseeded", "lesiongen/training/seg_data.py",
           "random.seed(seed)  #", "pass  #",
           ("tests/test_seg.py::test_segmentation_batches_depend_on_the_batch_number_alone",)),
    Mutant("ema_without_warm_up", "lesiongen/training/base.py",
           "d = min(decay, (1 + n) / (10 + n))", "d = decay",
           (f"{ALG}::test_ema_warm_up_follows_diffusers",)),
    # ---------------------------------------------------- issues 14 and 15: benefit statistics, realism, few steps
    Mutant("bootstrap_resamples_cases_only", "lesiongen/evaluation/statistics.py",
           "seeds = rng.integers(0, n_seeds, size=(n_samples, n_seeds))",
           "seeds = np.broadcast_to(np.arange(n_seeds), (n_samples, n_seeds))",
           ("tests/test_statistics.py",), "issue 14"),
    Mutant("wilcoxon_counts_each_seed_as_a_case", "lesiongen/evaluation/statistics.py",
           "return PairedDifference(mean, low, high, wilcoxon_p(per_case),",
           "return PairedDifference(mean, low, high, wilcoxon_p(differences.ravel()),",
           ("tests/test_statistics.py",), "issue 14"),
    Mutant("copy_paste_not_harmonised", "lesiongen/inference/copy_paste.py",
           "pasted = donors.images[donor] + shift[:, None, None, None]", "pasted = donors.images[donor]",
           ("tests/test_copy_paste.py",), "issue 14"),
    Mutant("contrast_calibration_ignores_shell_spread", "lesiongen/models/inpainter.py",
           "usable, np.asarray(target, dtype=np.float64) * shell_std + shell_mean - inside, 0.0))",
           "usable, np.asarray(target, dtype=np.float64) + shell_mean - inside, 0.0))",
           (f"{ALG}::test_contrast_calibration_hits_the_target_and_touches_only_the_lesion",), "issue 14"),
    Mutant("step_calibration_ignores_shell", "lesiongen/models/inpainter.py",
           "np.asarray(target, dtype=np.float64) + shell_mean - inside, 0.0))",
           "np.asarray(target, dtype=np.float64) - inside, 0.0))",
           (f"{ALG}::test_step_calibration_hits_the_target_step_and_touches_only_the_lesion",), "issue 14"),
    Mutant("edges_never_calibrated", "lesiongen/models/inpainter.py",
           "                        if not np.isnan(edges[i, k]).all():",
           "                        if False:",
           (f"{ALG}::test_inserted_lesions_take_the_edges_of_their_training_lesion_and_their_label_follows_the_mask",),
           "issue 14"),
    Mutant("edge_calibration_shifts_instead_of_scaling", "lesiongen/models/inpainter.py",
           "out[:, ring] = (was + scale[:, None] * change).astype(image.dtype)",
           "out[:, ring] = (image[:, ring] + (wanted - mean_change)[:, None]).astype(image.dtype)",
           (f"{ALG}::test_edge_calibration_scales_the_painted_change_to_the_target_step",), "issue 14"),
    Mutant("edge_gain_ignored", "lesiongen/models/inpainter.py",
           "scale = np.clip(wanted / mean_change, 0.0, max_gain)", "scale = np.clip(wanted / mean_change, 0.0, 1.0)",
           (f"{ALG}::test_edge_calibration_amplifies_a_ring_painted_short_up_to_its_max_gain",), "issue 14"),
    Mutant("edge_gain_not_passed_by_the_model", "lesiongen/models/inpainter.py",
           "                                                     self.config.edge_max_gain)",
           "                                                     1.0)",
           (f"{ALG}::test_insert_mode_amplifies_a_ring_painted_short_by_the_models_edge_max_gain",), "issue 14"),
    Mutant("edge_gain_setting_not_in_the_model", "lesiongen/training/trainers/inpaint.py",
           "edge_max_gain=float(self.edge_max_gain))", "edge_max_gain=1.0)",
           ("tests/test_planned_sampling.py::test_the_inpaint_trainers_edge_settings_reach_the_model_it_writes",),
           "issue 14"),
    Mutant("edge_surroundings_include_the_margin", "lesiongen/models/inpainter.py",
           "surroundings = (steps > margin_voxels) & (steps <= margin_voxels + SURROUNDING_RINGS) & usable",
           "surroundings = (steps > 0) & (steps <= margin_voxels + SURROUNDING_RINGS) & usable",
           (f"{ALG}::test_margin_rings_and_edge_steps_by_hand",), "issue 14"),
    Mutant("contrast_distance_not_in_real_spread", "lesiongen/evaluation/evaluate_inpainting.py",
           '"wasserstein_over_real_std": [d / s if s > 0 else None for d, s in zip(distance, real_std)],',
           '"wasserstein_over_real_std": [d if s > 0 else None for d, s in zip(distance, real_std)],',
           ("tests/test_inpainting_metrics.py",), "issue 14"),
    Mutant("plausibility_gate_open", "lesiongen/inference/synthesis.py",
           "if problem is None:", "if True:",
           (f"{ALG}::test_synthesis_replaces_implausible_masks_by_the_sphere_prior",), "issue 14"),
    Mutant("shape_bank_radius_as_long_axis", "lesiongen/models/spheres.py",
           "major = (3 * volume / (4 * math.pi * max(middle * middle * minor, 1e-9))) ** (1 / 3)",
           "major = radius",
           ("tests/test_sphere_sampler.py::test_shape_bank_draws_observed_shapes_whole",), "issue 14"),
    Mutant("planner_context_margin_zero", "lesiongen/planning/planner.py",
           "margin = max(4.0, 2 * max(spacing), 0.25 * r95)", "margin = 0.0",
           ("tests/test_planner.py::test_lesion_patch_fits_95_percent_of_lesions_with_margin",), "issue 14"),
    Mutant("planned_sampler_ignored", "lesiongen/training/diffusion.py",
           "self.few_step_sampling = self.stage_plan.planned_sampling(where) == FEW_STEP_SAMPLING",
           "self.few_step_sampling = False",
           ("tests/test_planned_sampling.py",), "issue 15"),
    Mutant("short_schedule_trains_every_timestep", "lesiongen/training/diffusion.py",
           "return add_noise(self.scheduler, clean, self.generator, self.model.config.schedule.trained_timesteps)",
           "return add_noise(self.scheduler, clean, self.generator, None)",
           ("tests/test_short_schedule.py",), "issue 15"),
    # ------------------------------------------------------------------------- the CI hang of 2026-12-03
    Mutant("augmentation_workers_forked", "lesiongen/training/background.py",
           'context = multiprocessing.get_context("spawn")', 'context = multiprocessing.get_context("fork")',
           ("tests/faults/test_fault_background_batches.py",)),
    # ------------------------------------------------------------ the few-step sampler chosen after training
    Mutant("few_step_choice_takes_the_worst", "lesiongen/training/few_step_choice.py",
           "best = min(worst, key=worst.get)", "best = max(worst, key=worst.get)",
           (f"{ALG}::test_few_step_choice_keeps_the_preferred_student_unless_another_sampler_is_closer_on_nearly_"
            "every_resample",
            "tests/test_mask_trainers.py::test_diffmask_chooses_the_few_step_sampler_closest_to_the_real_lesions"),
           "issue 15"),
    Mutant("few_step_choice_drops_the_preferred_student_on_any_loss", "lesiongen/training/few_step_choice.py",
           "chosen = best if max(beats.values()) >= CLEARLY_BETTER else preferred", "chosen = best",
           (f"{ALG}::test_few_step_choice_keeps_the_preferred_student_unless_another_sampler_is_closer_on_nearly_"
            "every_resample",), "issue 15"),
    Mutant("few_step_choice_resamples_draws_apart_from_their_patch", "lesiongen/training/few_step_choice.py",
           "drawn = (patches[:, None] * draws + np.arange(draws)).ravel()", "drawn = np.repeat(patches, draws)",
           (f"{ALG}::test_few_step_choice_resamples_each_patch_with_all_its_draws",), "issue 15"),
    Mutant("few_step_choice_ignores_the_spread", "lesiongen/training/few_step_choice.py",
           "(reference[m] if np.isfinite(reference[m]) else 0.0)) / spread[m] for m in used]",
           "(reference[m] if np.isfinite(reference[m]) else 0.0)) for m in used]",
           (f"{ALG}::test_few_step_choice_weighs_each_statistic_by_the_real_spread_and_takes_the_smallest_worst_excess",),
           "issue 15"),
    Mutant("few_step_preset_ignores_the_choice", "lesiongen/models/mask_generators.py",
           "schedule = sampling_preset(self.config.schedule, sampling, self.config.few_step_variant)",
           "schedule = sampling_preset(self.config.schedule, sampling)",
           (f"{ALG}::test_diffmask_switches_sampler_and_threshold_together",), "issue 15"),
    # ------------------------------------------------------------- several scans' lesions in one batch (issue 15)
    Mutant("jobs_never_share_a_call", "lesiongen/inference/synthesis.py",
           "together = {number: waiting.pop(number) for number in [n for n, r in waiting.items() if r.kind() == kind]}",
           "together = {number: waiting.pop(number) for number in [n for n, r in waiting.items() if r.kind() == kind]"
           "[:1]}",
           ("tests/test_inpaint.py::test_jobs_of_several_scans_share_the_network_and_give_each_scan_alone",),
           "issue 15"),
    Mutant("per_mask_seeds_share_one_stream", "lesiongen/models/mask_generators.py",
           "rngs = [np.random.default_rng(s) for s in seed]", "rng = np.random.default_rng(seed[0]); rngs = [rng] * n",
           ("tests/test_mask_trainers.py::test_per_mask_seeds_give_each_mask_what_it_gets_alone",), "issue 15"),
    Mutant("per_mask_noise_shares_one_generator", "lesiongen/diffusion/schedules.py",
           "return [torch.Generator().manual_seed(int(s)) for s in seed]",
           "return torch.Generator().manual_seed(int(seed[0]))",
           ("tests/test_mask_trainers.py::test_per_mask_seeds_draw_each_masks_own_noise",), "issue 15"),
    Mutant("predict_ignores_batch_scans", "lesiongen/inference/predict.py",
           "for start in range(0, len(todo), options.batch_scans):", "for start in range(0, len(todo), 1):",
           ("tests/test_predict.py::test_batch_scans_shares_the_inpainter_between_scans_and_changes_no_output",),
           "issue 15"),
    Mutant("export_ignores_batch_scans", "lesiongen/sharing/export_nnunet.py",
           "for start in range(0, n, batch_scans):", "for start in range(0, n, 1):",
           ("tests/test_export_nnunet.py::test_batch_scans_shares_the_inpainter_between_cases_and_changes_no_case",),
           "issue 15"),
    Mutant("label_is_the_generated_mask", "lesiongen/inference/synthesis.py",
           "label = lesion.mask if lesion.record[\"mask_source\"] == GIVEN_MASK else painted_lesion(",
           "label = lesion.mask if True else painted_lesion(",
           ("tests/test_inpaint.py::test_generated_lesions_are_labelled_as_painted_and_given_masks_as_given",),
           "issue 14"),
    Mutant("painted_rim_needs_no_half_maximum", "lesiongen/diffusion/inpainting.py",
           "like_lesion = change[channel] * np.sign(mean_change[channel]) >= 0.5 * abs(mean_change[channel])",
           "like_lesion = change[channel] * np.sign(mean_change[channel]) >= 0.0",
           ("tests/test_inpaint.py::test_painted_lesion_labels_the_margin_voxels_painted_like_the_lesion",),
           "issue 14"),
    # ------------------------------------------------------------------- what the GPU check changed (issue 15)
    Mutant("diffusion_memory_footprint_as_before", "lesiongen/planning/topology.py",
           "DIFFUSION_ACTIVATION_FOOTPRINT = 2.67", "DIFFUSION_ACTIVATION_FOOTPRINT = 2.0",
           ("tests/test_planner.py::test_diffusion_memory_estimate_matches_the_peak_measured_on_a_gpu",), "issue 15"),
    Mutant("edit_region_cube_one_voxel_short", "lesiongen/diffusion/inpainting.py",
           "size = (1,) * (mask.ndim - 3) + (2 * margin_voxels + 1,) * 3",
           "size = (1,) * (mask.ndim - 3) + (2 * margin_voxels,) * 3",
           ("tests/test_inpaint.py::test_edit_region_is_the_26_neighbourhood_dilation_repeated_margin_times",),
           "issue 15"),
    Mutant("shift_by_one_voxel_too_few", "lesiongen/preprocessing/lesion_patches.py",
           "target.append(slice(max(0, s), n - max(0, -s)))", "target.append(slice(max(0, s - 1), n - max(0, -s) - 1))",
           ("tests/test_inpaint.py::test_shifted_moves_whole_voxels_and_fills_with_zero",), "issue 15"),
    Mutant("distillation_target_ignores_the_start", "lesiongen/diffusion/schedules.py",
           "(x_s.double() - (b_s / b_t) * x_t.double())", "(x_s.double() - 0 * x_t.double())",
           ("tests/test_schedules.py::test_the_distillation_target_makes_the_ddim_step_land_on_the_teachers_next_state",
            "tests/test_schedules.py::test_a_student_with_exact_targets_retraces_the_teachers_trajectory_in_four_steps"),
           "issue 15"),
    Mutant("student_never_stepped", "lesiongen/training/distillation.py",
           "clipped_step(scaler, optimizer, student.parameters(), settings.grad_clip)", "pass",
           ("tests/test_distillation.py",), "issue 15"),
    Mutant("student_last_step_judged_unclamped", "lesiongen/training/distillation.py",
           "prediction.clamp(-1, 1), prediction)", "prediction, prediction)",
           ("tests/test_distillation.py::test_the_last_steps_estimate_is_judged_as_sampled_clamped_and_the_others_as_they_are",),
           "issue 15"),
    Mutant("distilled_sampling_runs_the_teacher", "lesiongen/models/mask_generators.py",
           "network = self.networks[self.sampling_network]", "network = self.networks['denoiser']",
           ("tests/test_distillation.py::test_the_loaded_model_samples_with_its_student_in_four_evaluations",),
           "issue 15"),
    # ------------------------------------------------------- measurements a probe found untested (2026-12-07)
    Mutant("sphericity_one_face_area_for_every_axis", "lesiongen/evaluation/mask_metrics.py",
           "* face_area[a] for a in range(3)", "* face_area[0] for a in range(3)",
           ("tests/test_mask_metrics.py::test_sphericity_takes_each_face_area_from_the_other_two_spacings",)),
    Mutant("wilcoxon_ranks_the_zeros", "lesiongen/evaluation/statistics.py",
           'zero_method="wilcox"', 'zero_method="pratt"',
           ("tests/test_statistics.py::test_wilcoxon_drops_zero_differences_before_ranking",)),
    Mutant("calibration_ignores_the_lesion_count", "lesiongen/training/trainers/diffmask.py",
           "abs(np.log((count + 1e-3) / (real_count + 1e-3))))", "0.0)",
           (f"{ALG}::test_calibration_pays_for_too_many_lesions_of_the_right_size",)),
    Mutant("calibration_judges_outside_the_brain", "lesiongen/training/trainers/diffmask.py",
           "    masks[~brain] = 0\n    return np.stack([drop_small", "    return np.stack([drop_small",
           (f"{ALG}::test_calibration_judges_only_what_lies_in_the_brain",)),
    Mutant("contrast_shell_outside_the_brain", "lesiongen/fingerprint/lesions.py",
           "<= shell_voxels) & ~lesion_crop & brain[crop]", "<= shell_voxels) & ~lesion_crop",
           ("tests/test_inpainting_metrics.py::test_lesion_contrast_shell_is_the_brain_voxels_beside_the_lesion",)),
    Mutant("rescale_without_the_minimum", "lesiongen/preprocessing/normalization.py",
           "            channel -= low\n", "",
           ("tests/test_scan_space.py::test_each_normalisation_scheme_by_hand",)),
    Mutant("ct_not_clipped", "lesiongen/preprocessing/normalization.py",
           "np.clip(channel, scheme.clip_lower, scheme.clip_upper, out=channel)", "pass",
           ("tests/test_scan_space.py::test_each_normalisation_scheme_by_hand",)),
    Mutant("mirroring_flips_a_channel_axis", "lesiongen/training/data.py",
           "axes = tuple(out[i].ndim - 3 + int(a) for a in np.flatnonzero(row))",
           "axes = tuple(int(a) for a in np.flatnonzero(row))",
           (f"{ALG}::test_mirroring_flips_only_the_spatial_axes_whatever_comes_before_them",)),
    Mutant("ssim_with_the_wrong_constant", "lesiongen/evaluation/inpainting_metrics.py",
           "c2 = (k2 * data_range) ** 2", "c2 = (k1 * data_range) ** 2",
           ("tests/test_inpainting_metrics.py::test_ssim_map_is_scikit_images_gaussian_ssim_away_from_the_border",)),
    Mutant("fingerprint_upper_percentile_99", "lesiongen/fingerprint/fingerprint.py",
           "np.percentile(samples, [0.5, 50.0, 99.5])", "np.percentile(samples, [0.5, 50.0, 99.0])",
           ("tests/test_planner.py::test_intensity_properties_are_nnunets_statistics_of_the_samples",)),
    Mutant("placement_ignores_the_earlier_lesions", "lesiongen/models/spheres.py",
           "        if clearance >= 0:\n            return voxel\n", "        return voxel\n",
           ("tests/test_sphere_sampler.py::test_placement_takes_a_clear_candidate_else_the_least_overlapping_one",)),
    Mutant("crowded_placement_keeps_the_first_candidate", "lesiongen/models/spheres.py",
           "        if clearance > best_clearance:\n", "        if best is None:\n",
           ("tests/test_sphere_sampler.py::test_placement_takes_a_clear_candidate_else_the_least_overlapping_one",)),
    Mutant("nearest_allowed_centre_in_voxels", "lesiongen/models/spheres.py",
           "dist = np.sum(((points - target) * spacing) ** 2, axis=1)", "dist = np.sum((points - target) ** 2, axis=1)",
           ("tests/test_sphere_sampler.py::test_the_nearest_allowed_centre_is_nearest_in_millimetres",)),
    Mutant("resampled_size_rounded_down", "lesiongen/preprocessing/resampling.py",
           "[max(1, int(round(s * sp / t)))", "[max(1, int(s * sp / t))",
           ("tests/test_plan_and_preprocess_cli.py::test_resampling_copies_slices_along_an_axis_over_three_times_coarser_and_splines_the_rest",)),
    Mutant("no_axis_is_ever_coarse", "lesiongen/preprocessing/resampling.py",
           "return axis if spacing[axis] > ANISOTROPY_RATIO * others.max() else None", "return None",
           ("tests/test_plan_and_preprocess_cli.py::test_resampling_copies_slices_along_an_axis_over_three_times_coarser_and_splines_the_rest",)),
    Mutant("coarse_axis_splined", "lesiongen/preprocessing/resampling.py",
           "return ndimage.zoom(out, along, order=0,", "return ndimage.zoom(out, along, order=order,",
           ("tests/test_plan_and_preprocess_cli.py::test_resampling_copies_slices_along_an_axis_over_three_times_coarser_and_splines_the_rest",)),
    Mutant("images_resampled_linearly", "lesiongen/preprocessing/resampling.py",
           "_zoom(c, shape, 3, coarse)", "_zoom(c, shape, 1, coarse)",
           ("tests/test_plan_and_preprocess_cli.py::test_resampling_copies_slices_along_an_axis_over_three_times_coarser_and_splines_the_rest",)),
    Mutant("copy_paste_donor_shell_outside_the_donors_brain", "lesiongen/inference/copy_paste.py",
           "donor_shell = shell & donors.brain[donor]", "donor_shell = shell",
           ("tests/test_copy_paste.py::test_the_donor_side_of_the_harmonisation_shell_is_cut_to_the_donors_brain",)),
    Mutant("copy_paste_never_carves_the_widest_margin", "lesiongen/inference/copy_paste.py",
           "int(rng.integers(1, max_margin + 1))", "int(rng.integers(1, max_margin))",
           ("tests/test_copy_paste.py::test_the_carved_margin_takes_every_width_from_one_to_the_largest",)),
    Mutant("copy_paste_label_patch_overwrites_earlier_lesions", "lesiongen/inference/copy_paste.py",
           "np.where(lesion > 0, lesion, existing).astype(np.uint8)", "lesion.astype(np.uint8)",
           ("tests/test_copy_paste.py::test_a_later_paste_keeps_the_labels_of_the_lesions_pasted_before",)),
    Mutant("copy_paste_margin_carries_the_donors_background", "lesiongen/inference/copy_paste.py",
           "paste_into = recipient_brain & (donors.brain[donor] | (lesion > 0))", "paste_into = recipient_brain",
           ("tests/test_copy_paste.py::test_the_carved_margin_carries_no_voxel_from_outside_the_donors_brain",)),
    Mutant("beta_moments_swapped", "lesiongen/planning/priors.py",
           "return Beta(float(mean * common), float((1 - mean) * common))",
           "return Beta(float((1 - mean) * common), float(mean * common))",
           ("tests/test_planner.py::test_fitted_prior_distributions_by_hand",)),
    Mutant("lognormal_without_its_floor", "lesiongen/planning/priors.py",
           "data = np.maximum(np.asarray(values, dtype=float), floor)", "data = np.asarray(values, dtype=float)",
           ("tests/test_planner.py::test_fitted_prior_distributions_by_hand",)),
    Mutant("lognormal_sigma_of_the_values", "lesiongen/planning/priors.py",
           "float(logs.std())", "float(data.std())",
           ("tests/test_planner.py::test_fitted_prior_distributions_by_hand",)),
    Mutant("small_lesions_judged_in_voxels", "lesiongen/evaluation/segmentation_metrics.py",
           "small = ref_sizes * voxel_mm3 < small_lesion_mm3", "small = ref_sizes < small_lesion_mm3",
           ("tests/test_segmentation_metrics.py::test_small_lesions_are_judged_by_their_volume_in_cubic_millimetres",)),
    Mutant("pooled_recall_is_the_mean_of_the_cases", "lesiongen/evaluation/segmentation_metrics.py",
           'totals["recall"] = _ratio(totals["tp_lesions"], totals["n_ref_lesions"])',
           'totals["recall"] = mean.get("lesion_recall", math.nan)',
           ("tests/test_segmentation_metrics.py::test_pooled_recall_weighs_every_lesion_not_every_case",)),
    Mutant("contrast_permutation_p_without_its_floor", "lesiongen/evaluation/evaluate_inpainting.py",
           "float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))",
           "float(np.sum(null >= observed - 1e-12) / permutations)",
           ("tests/test_inpainting_metrics.py::test_contrast_agreement_units_floor_and_interval_by_hand",)),
    Mutant("contrast_bootstrap_resamples_inserted_at_the_real_size", "lesiongen/evaluation/evaluate_inpainting.py",
           "(permutations, len(inserted))), c]", "(permutations, len(real))), c]",
           ("tests/test_inpainting_metrics.py::test_contrast_agreement_units_floor_and_interval_by_hand",)),
    Mutant("contrast_ratio_interval_90_percent", "lesiongen/evaluation/evaluate_inpainting.py",
           "[float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]",
           "[float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))]",
           ("tests/test_inpainting_metrics.py::test_contrast_agreement_units_floor_and_interval_by_hand",)),
    Mutant("contrast_distance_in_the_inserted_spread", "lesiongen/evaluation/evaluate_inpainting.py",
           "[d / s if s > 0 else None for d, s in zip(distance, real_std)]",
           "[d / s if s > 0 else None for d, s in zip(distance, inserted.std(axis=0))]",
           ("tests/test_inpainting_metrics.py::test_contrast_agreement_units_floor_and_interval_by_hand",)),
    Mutant("rescale_denormalised_without_its_minimum", "lesiongen/inference/scan_space.py",
           'max(params["high"] - params["low"], 1e-8) + params["low"]', 'max(params["high"] - params["low"], 1e-8)',
           ("tests/test_scan_space.py::test_denormalise_inverts_normalisation",)),
    Mutant("paste_back_box_without_the_margin", "lesiongen/inference/scan_space.py",
           "box = [[max(a - margin_voxels, 0), min(b + margin_voxels, n)]", "box = [[a, b]",
           ("tests/test_scan_space.py::test_the_margin_is_the_whole_cube_around_the_change_on_the_same_grid",)),
    # ------------------------------------------------------------------- synthetic cases faded out (issue 14)
    Mutant("synthetic_share_never_fades", "lesiongen/training/seg_data.py",
           "share = self.synthetic_share.at(number)", "share = self.synthetic_share.share",
           ("tests/test_seg.py::test_segmentation_batches_draw_synthetic_cases_at_their_step_s_share",), "issue 14"),
    Mutant("fade_measured_from_the_start", "lesiongen/training/seg_data.py",
           "return self.share * max(0.0, 1.0 - progress) / (1.0 - self.fade_start)",
           "return self.share * max(0.0, 1.0 - progress)",
           ("tests/test_seg.py::test_synthetic_share_fades_linearly_after_its_start",), "issue 14"),
    Mutant("benefit_drops_the_fade", "lesiongen/benefit.py",
           "None if s == \"none\" else options.synthetic_fade_start, user_settings",
           "None, user_settings",
           ("tests/test_benefit.py::test_a_fade_reaches_the_seg_models_with_synthetic_cases_only",), "issue 14"),
    Mutant("real_only_seg_depends_on_the_fade", "lesiongen/training/trainers/seg.py",
           'del settings["synthetic_fade_start"]', "pass",
           ("tests/test_seg.py::test_seg_models_from_before_the_fade_are_stale_unless_they_had_nothing_to_fade",),
           "issue 14"),
    Mutant("real_only_check_pairs_half_against_full", "lesiongen/benefit.py",
           'paired_difference(_matrix(scores, full, cases, "dice"), half)',
           'paired_difference(half, _matrix(scores, full, cases, "dice"))',
           ("tests/test_benefit.py::test_the_schedule_check_says_whether_real_only_was_still_improving",
            "tests/test_benefit.py::test_the_data_check_says_whether_more_real_cases_raised_dice"), "own"),
    Mutant("real_only_check_without_its_own_results_tree", "lesiongen/benefit.py",
           "with results_root_at(results_root() / check):", "if True:",
           ("tests/test_benefit.py::test_the_schedule_check_trains_real_only_at_half_the_steps_in_a_results_tree_of_its_own",
            "tests/test_benefit.py::test_the_data_check_trains_real_only_on_half_the_real_cases_in_a_results_tree_of_its_own"),
           "own"),
    Mutant("benefit_progress_counts_the_up_to_date_trainings", "lesiongen/benefit.py",
           'f"trainings ({phase})", total=len(todo)', 'f"trainings ({phase})", total=len(jobs)',
           ("tests/test_benefit.py::test_the_trainings_log_how_many_of_those_to_train_are_done",), "issue 15"),
    Mutant("benefit_trusts_a_prediction_without_its_hash", "lesiongen/benefit.py",
           '\n                and first_mismatch(record.parent, recorded["checksums"]) is None)', ")",
           ("tests/test_benefit.py::test_a_test_prediction_is_reused_only_for_the_same_model_scan_mirroring_and_file",),
           "issue 14"),
    Mutant("benefit_prediction_key_without_the_source", "lesiongen/benefit.py",
           '"lesiongen_version": code["lesiongen_version"], "source_sha256": code["source_sha256"]}',
           '"lesiongen_version": code["lesiongen_version"]}',
           ("tests/test_benefit.py::test_a_test_prediction_is_reused_only_for_the_same_model_scan_mirroring_and_file",),
           "issue 14"),
    Mutant("source_hash_without_the_file_names", "lesiongen/utilities/provenance.py",
           '        digest.update(path.relative_to(package).as_posix().encode() + b"\\0")\n', "",
           ("tests/test_benchmark_provenance.py::test_the_source_hash_follows_the_python_files_and_nothing_else",),
           "issue 14"),
    Mutant("compare_runs_gains_without_real_only", "benchmarks/compare_benefit_runs.py",
           "return values - score_matrix(scores, [real_only_of(m) for m in models], cases, metric) if gains "
           "else values", "return values",
           ("tests/test_benefit.py::test_two_runs_compare_what_each_strategy_adds_over_real_only",), "issue 14"),
    Mutant("benefit_inpainter_without_its_settings", "lesiongen/benefit.py",
           'TrainingJob("inpaint", options.inpaint_steps, user_settings=user.get("inpaint", ()))',
           'TrainingJob("inpaint", options.inpaint_steps)',
           (TRAINER_SETTINGS_TEST,), "issue 14"),
    Mutant("benefit_schedule_check_without_the_seg_settings", "lesiongen/benefit.py",
           'TrainingJob("seg", full // 2, seed, "none", user_settings=seg_settings)',
           'TrainingJob("seg", full // 2, seed, "none")',
           (TRAINER_SETTINGS_TEST,), "issue 14"),
    Mutant("benefit_lets_a_setting_override_the_comparison", "lesiongen/benefit.py",
           'if trainer == "seg" and key in SEG_SETTINGS_SET_HERE:', "if False:",
           (TRAINER_SETTINGS_TEST,), "issue 14"),
    Mutant("benefit_prediction_key_without_mirroring", "lesiongen/benefit.py",
           '"images_sha256": images_sha256, "mirror": mirror,', '"images_sha256": images_sha256,',
           ("tests/test_benefit.py::test_a_test_prediction_is_reused_only_for_the_same_model_scan_mirroring_and_file",),
           "issue 14"),
    Mutant("benefit_strategies_compared_the_wrong_way_round", "lesiongen/benefit.py",
           '_matrix(scores, names(earlier, options.ratio), cases, "dice")))}',
           '_matrix(scores, names(later, options.ratio), cases, "dice")))}',
           ("tests/test_benefit.py::test_the_synthetic_strategies_are_compared_with_each_other_paired",), "issue 14"),
    Mutant("real_case_fraction_ignored", "lesiongen/training/trainers/seg.py",
           "self.train_cases = case_subset(self.fold_train_cases, self.real_case_fraction, self.options.seed)",
           "self.train_cases = list(self.fold_train_cases)",
           ("tests/test_seg.py::test_seg_learns_from_a_seeded_share_of_the_real_cases_with_real_data_only",
            "tests/test_benefit.py::test_the_data_check_trains_real_only_on_half_the_real_cases_in_a_results_tree_of_its_own"),
           "own"),
    Mutant("real_case_fraction_of_the_share_already_taken", "lesiongen/training/trainers/seg.py",
           "case_subset(self.fold_train_cases,", "case_subset(self.train_cases,",
           ("tests/test_seg.py::test_seg_learns_from_a_seeded_share_of_the_real_cases_with_real_data_only",), "own"),
    Mutant("case_subset_rounds_down", "lesiongen/preprocessing/splits.py",
           "math.floor(fraction * len(cases) + 0.5)", "int(fraction * len(cases))",
           ("tests/test_mask_trainers.py::test_a_share_of_the_cases_is_seeded_rounded_half_up_and_in_order",), "own"),
    # a second probe (2026-12-07): schedule and distillation lines no test exercised
    Mutant("default_sampling_keeps_the_few_step_spacing", "lesiongen/diffusion/schedules.py",
           "timestep_spacing=None, clean_final_step=False)", "clean_final_step=False)",
           ("tests/test_schedules.py::test_the_default_sampler_of_a_few_step_model_samples_at_the_default_timesteps",)),
    Mutant("dpm_solver_never_clips", "lesiongen/diffusion/schedules.py",
           "thresholding=config.clip_sample, sample_max_value=1.0)", "thresholding=False, sample_max_value=1.0)",
           ("tests/test_schedules.py::test_dpm_solver_clips_an_overshooting_clean_estimate_to_the_mask_range",)),
    Mutant("ddim_always_ends_clean", "lesiongen/diffusion/schedules.py",
           "set_alpha_to_one=config.clean_final_step)", "set_alpha_to_one=True)",
           ("tests/test_schedules.py::"
            "test_ddim_without_a_clean_final_step_ends_at_the_first_training_timesteps_noise_level",)),
    Mutant("ddpm_samples_only_the_inference_steps", "lesiongen/diffusion/schedules.py",
           'return config.num_train_timesteps if config.sampler == "ddpm" else config.num_inference_steps',
           "return config.num_inference_steps",
           ("tests/test_schedules.py::test_ddpm_evaluates_every_training_timestep_and_its_step_noise_follows_the_seed",)),
    Mutant("ddpm_step_noise_unseeded", "lesiongen/diffusion/schedules.py",
           '    if config.sampler == "ddpm" else {}', "    if False else {}",
           ("tests/test_schedules.py::test_ddpm_evaluates_every_training_timestep_and_its_step_noise_follows_the_seed",)),
    Mutant("trained_timesteps_kept_as_given", "lesiongen/diffusion/schedules.py",
           "self.trained_timesteps = tuple(sorted({int(t) for t in self.trained_timesteps}, reverse=True))",
           "self.trained_timesteps = tuple(int(t) for t in self.trained_timesteps)",
           ("tests/test_schedules.py::test_trained_timesteps_are_kept_once_each_noisiest_first",)),
    Mutant("distillation_targets_are_the_next_states", "lesiongen/training/distillation.py",
           "targets=student_targets(trajectories, timesteps, student), timesteps=timesteps)",
           "targets=trajectories[:, 1:], timesteps=timesteps)",
           ("tests/test_distillation.py::test_a_teacher_path_of_one_clean_mask_asks_every_student_step_for_that_mask",)),
    Mutant("distillation_final_mask_of_another_trajectory", "lesiongen/training/distillation.py",
           "finals=bank.final[items], controls=bank.controls[items],",
           "finals=bank.final[items[::-1]], controls=bank.controls[items],",
           ("tests/test_distillation.py::"
            "test_a_batch_keeps_each_samples_parts_from_one_trajectory_and_flags_the_last_step",)),
    Mutant("distillation_flags_the_first_step_as_last", "lesiongen/training/distillation.py",
           "last_step=steps == len(timesteps) - 1)", "last_step=steps == 0)",
           ("tests/test_distillation.py::"
            "test_a_batch_keeps_each_samples_parts_from_one_trajectory_and_flags_the_last_step",)),
    Mutant("distillation_loss_region_without_the_final_lesion", "lesiongen/training/distillation.py",
           "region = (batch.controls > 0) | (batch.finals > 0).any(axis=1)", "region = (batch.controls > 0)",
           ("tests/test_distillation.py::"
            "test_the_students_loss_weighs_the_sphere_and_the_lesion_its_trajectory_ends_on",)),
    Mutant("lesions_outside_brain_mask_dropped", "lesiongen/preprocessing/preprocessor.py",
           "seg[~brain & (seg == 0)] = OUTSIDE_BRAIN",
           "seg[~brain] = OUTSIDE_BRAIN",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_lesion_voxel_outside_the_brain_mask_but_inside_its_box_stays_a_lesion",)),
    Mutant("preprocessed_images_stored_half_precision", "lesiongen/preprocessing/preprocessor.py",
           "save_array(folder / files[0], images)",
           "save_array(folder / files[0], images.astype(np.float16))",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_resampled_case_records_its_cropped_shape_before_resampling_and_keeps_float32_values",)),
    Mutant("shape_after_crop_is_the_resampled_shape", "lesiongen/preprocessing/preprocessor.py",
           '"shape_after_crop": list(brain.shape),',
           '"shape_after_crop": list(images.shape[1:]),',
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_resampled_case_records_its_cropped_shape_before_resampling_and_keeps_float32_values",)),
    Mutant("class_locations_first_voxels_only", "lesiongen/preprocessing/preprocessor.py",
           "coords = coords[rng.choice(len(coords), LOCATIONS_PER_CLASS, replace=False)]",
           "coords = coords[:LOCATIONS_PER_CLASS]",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_large_lesion_class_keeps_a_seeded_sample_of_its_voxels_from_all_of_it",)),
    Mutant("signature_ignores_lesion_patch_size", "lesiongen/preprocessing/preprocessor.py",
           '"lesion_patch_size": plans.lesion_patch_size,',
           '"lesion_patch_size": None,',
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_the_plans_signature_follows_what_changes_preprocessed_files_and_nothing_else",)),
    Mutant("patch_centre_floored", "lesiongen/preprocessing/patches.py",
           "centre = np.round(centroid).astype(int)",
           "centre = np.floor(centroid).astype(int)",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_lesion_patch_is_centred_on_the_nearest_voxel_and_keeps_only_whole_lesions_of_every_class",)),
    Mutant("cut_lesions_of_other_classes_kept", "lesiongen/preprocessing/patches.py",
           "lesion, n = ndimage.label(mask > 0, structure=CONNECTIVITY_26)",
           "lesion, n = ndimage.label(mask == label, structure=CONNECTIVITY_26)",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_lesion_patch_is_centred_on_the_nearest_voxel_and_keeps_only_whole_lesions_of_every_class",)),
    Mutant("border_check_ignores_last_axis", "lesiongen/preprocessing/patches.py",
           "or mask[:, :, 0].any() or mask[:, :, -1].any())",
           "or mask[:, :, 0].any() or mask[:, :, 0].any())",
           ("tests/test_plan_and_preprocess_cli.py::"
            "test_a_lesion_patch_is_centred_on_the_nearest_voxel_and_keeps_only_whole_lesions_of_every_class",)),
    Mutant("brain_mask_not_among_case_files", "lesiongen/io/dataset.py",
           "[*self.images, self.label, self.tissue, self.brain_mask]",
           "[*self.images, self.label, self.tissue]",
           ("tests/test_plan_and_preprocess_cli.py::test_an_edited_brain_mask_makes_its_case_stale",)),
    Mutant("loaded_brain_excludes_healthy_background", "lesiongen/preprocessing/lesion_patches.py",
           "(raw_masks >= 0)",
           "(raw_masks > 0)",
           ("tests/test_lesion_patches.py::"
            "test_a_loaded_patchs_brain_is_its_nonzero_tissue_and_its_lesions_not_padding_or_background",)),
    Mutant("fill_median_includes_lesion_voxels", "lesiongen/preprocessing/lesion_patches.py",
           "healthy = brain & ~region",
           "healthy = brain",
           ("tests/test_lesion_patches.py::"
            "test_a_filled_lesion_takes_the_median_of_the_healthy_voxels_of_its_tissue_class_around_it",)),
    Mutant("fill_with_the_lesions_own_median", "lesiongen/preprocessing/lesion_patches.py",
           "out[c][target] = np.median(image[c][source]) if source.any() else 0.0",
           "out[c][target] = np.median(image[c][target]) if source.any() else 0.0",
           ("tests/test_lesion_patches.py::"
            "test_a_filled_lesion_takes_the_median_of_the_healthy_voxels_of_its_tissue_class_around_it",)),
    Mutant("relocated_shape_partly_outside_brain", "lesiongen/preprocessing/lesion_patches.py",
           "brain[moved].all()",
           "brain[moved].any()",
           ("tests/test_lesion_patches.py::"
            "test_a_relocated_shape_lies_wholly_in_the_brain_off_the_avoided_voxels_and_moves_both_ways",)),
    Mutant("relocation_shifts_positive_only", "lesiongen/preprocessing/lesion_patches.py",
           "shift = rng.integers(-size // 2, size // 2 + 1)",
           "shift = rng.integers(0, size // 2 + 1)",
           ("tests/test_lesion_patches.py::"
            "test_a_relocated_shape_lies_wholly_in_the_brain_off_the_avoided_voxels_and_moves_both_ways",)),
    Mutant("file_size_of_the_last_chunk_only", "lesiongen/preprocessing/storage.py",
           "size += len(chunk)",
           "size = len(chunk)",
           ("tests/faults/test_fault_checksums.py::"
            "test_a_record_of_a_file_read_in_several_chunks_holds_its_whole_size_and_hash",)),
    Mutant("folds_not_shuffled", "lesiongen/preprocessing/splits.py",
           "order = np.random.default_rng(seed).permutation(len(cases))",
           "order = np.arange(len(cases))",
           ("tests/test_mask_trainers.py::test_splits_cover_every_case_once_and_are_reused",)),
    Mutant("splits_depend_on_input_order", "lesiongen/preprocessing/splits.py",
           "cases = sorted(case_ids)",
           "cases = list(case_ids)",
           ("tests/test_mask_trainers.py::test_splits_cover_every_case_once_and_are_reused",)),
    Mutant("direction_sign_ignored", "lesiongen/io/images.py",
           "if not np.allclose(self.direction, other.direction, rtol=0, atol=atol):",
           "if not np.allclose(np.abs(self.direction), np.abs(other.direction), rtol=0, atol=atol):",
           ("tests/test_integrity.py::"
            "test_a_flipped_axis_or_an_origin_half_a_voxel_off_is_another_grid_and_rounding_is_not",)),
    Mutant("origin_tolerance_a_voxel_wide", "lesiongen/io/images.py",
           "atol=max(atol, rtol * max(self.spacing) * 10)",
           "atol=max(atol, rtol * max(self.spacing) * 10000)",
           ("tests/test_integrity.py::"
            "test_a_flipped_axis_or_an_origin_half_a_voxel_off_is_another_grid_and_rounding_is_not",)),
    Mutant("legacy_plans_file_preferred", "lesiongen/planning/plans.py",
           "legacy if identifier == PLANS_NAME and not path.is_file() and legacy.is_file() else path",
           "legacy if identifier == PLANS_NAME and legacy.is_file() else path",
           ("tests/test_planner.py::"
            "test_the_default_plans_file_wins_over_the_01_name_which_is_read_only_when_alone",)),
    Mutant("old_plans_default_to_few_step", "lesiongen/planning/plans.py",
           "return DEFAULT_SAMPLING",
           "return FEW_STEP_SAMPLING",
           ("tests/test_planner.py::"
            "test_a_diffusion_stage_planned_before_the_sampling_field_samples_with_the_default_preset",)),
    Mutant("kernels_grow_only_on_the_finest_axis", "lesiongen/planning/topology.py",
           "current_spacing[a] / finest < 2 else 1",
           "current_spacing[a] / finest <= 1 else 1",
           ("tests/test_planner.py::"
            "test_kernels_are_3_along_axes_within_twice_the_finest_spacing_and_1_along_coarser_ones",)),
    Mutant("mirroring_never_drawn", "lesiongen/training/data.py",
           "flips = rng.random((batch_size, 3)) < 0.5 if mirror",
           "flips = rng.random((batch_size, 3)) < 0.0 if mirror",
           ("tests/test_algorithms.py::"
            "test_each_axis_is_mirrored_for_about_half_the_samples_and_never_when_mirroring_is_off",)),
    Mutant("markdown_vs_none_column_shows_the_metric", "lesiongen/evaluation/compare.py",
           'cells += [_cell(row[f"{m}_vs_none"]) for m in PAIRED_OVER_CASES]',
           "cells += [_cell(row[m]) for m in PAIRED_OVER_CASES]",
           ("tests/test_compare.py::"
            "test_the_comparison_table_shows_the_paired_difference_in_its_vs_none_column",)),
    Mutant("report_table_better_worse_swapped", "lesiongen/evaluation/benefit_report.py",
           'f"{d[\'cases_better\']} / {d[\'cases_worse\']}"',
           'f"{d[\'cases_worse\']} / {d[\'cases_better\']}"',
           ("tests/test_benefit.py::"
            "test_report_table_shows_the_paired_dice_its_p_and_the_cases_better_before_worse",)),
    Mutant("small_components_found_across_classes", "lesiongen/models/conditioning.py",
           "ndimage.label(labels == label, structure=CONNECTIVITY_26)",
           "ndimage.label(labels > 0, structure=CONNECTIVITY_26)",
           ("tests/test_algorithms.py::test_small_components_are_dropped_per_class",)),
    Mutant("implausible_radius_in_voxels", "lesiongen/inference/synthesis.py",
           "np.argwhere(mask > 0) * np.asarray(spacing))",
           "np.argwhere(mask > 0))",
           ("tests/test_algorithms.py::test_implausible_masks_are_named",)),
    Mutant("placement_ignores_the_placement_weights", "lesiongen/inference/synthesis.py",
           "p=weights[label])",
           "p=None)",
           ("tests/test_algorithms.py::test_drawn_lesions_are_placed_where_the_placement_weights_are",)),
    Mutant("given_lesion_patch_takes_its_neighbours", "lesiongen/inference/synthesis.py",
           "extract_patch(ids, centre, patch_size, fill=0) == index, value, 0)",
           "extract_patch(ids, centre, patch_size, fill=0) > 0, value, 0)",
           ("tests/test_scan_space.py::"
            "test_each_given_lesion_gets_a_patch_of_its_own_without_its_neighbours",)),
    Mutant("overlapping_patches_batched_together", "lesiongen/inference/synthesis.py",
           "< n for a, b, n in zip(centre, other, patch_size))",
           "< n // 2 for a, b, n in zip(centre, other, patch_size))",
           ("tests/test_algorithms.py::test_patches_overlap_exactly_when_their_boxes_share_a_voxel",)),
    Mutant("realmask_pasted_not_inpainted", "lesiongen/inference/strategies.py",
           'Strategy("realmask", None, True,',
           'Strategy("realmask", None, False,',
           ("tests/test_seg.py::test_realmask_paints_copy_paste_lesions_where_copy_paste_pastes_them",)),
    Mutant("sphere_strategy_draws_diffmask_masks", "lesiongen/inference/strategies.py",
           'Strategy("sphere", "spheremask", True,',
           'Strategy("sphere", "diffmask", True,',
           ("tests/test_benefit.py::"
            "test_each_strategy_trains_the_models_it_paints_or_draws_with_and_no_other",)),
    # ------------------------------------------------------------------ the SYNTHESIS_VERSION guard
    # what a seed makes changes while SYNTHESIS_VERSION stays: cached synthetic cases would be reused wrongly
    Mutant("synthetic_redraw_seed_changes_silently", "lesiongen/training/synthetic.py",
           'derive_seed(key["seed"], "attempt", attempt)', 'derive_seed(key["seed"], "redraw", attempt)',
           ("tests/test_synthesis_reference.py",)),
    Mutant("inpainting_noise_seed_changes_silently", "lesiongen/inference/synthesis.py",
           "np.asarray(centre), image_patch, brain_patch, mask, int(rng.integers(2**31)),",
           "np.asarray(centre), image_patch, brain_patch, mask, int(rng.integers(2**30)),",
           ("tests/test_synthesis_reference.py",)),
    Mutant("diffmask_noise_seed_changes_silently", "lesiongen/models/mask_generators.py",
           "noise_seed = [int(rng.integers(2**31)) for rng in rngs]",
           "noise_seed = [int(rng.integers(2**30)) for rng in rngs]",
           ("tests/test_synthesis_reference.py",)),
    Mutant("ganmask_noise_scale_changes_silently", "lesiongen/models/mask_generators.py",
           "NOISE_CELL_VOXELS: ClassVar[int] = 4", "NOISE_CELL_VOXELS: ClassVar[int] = 3",
           ("tests/test_synthesis_reference.py",)),
    Mutant("diffmask_sampler_steps_change_silently", "lesiongen/models/mask_generators.py",
           "return self._run_sampler(controls, tissue, seed, schedule or self.config.schedule, progress)",
           "return self._run_sampler(controls, tissue, seed, dataclasses.replace(schedule or self.config.schedule, "
           "num_inference_steps=10), progress)",
           ("tests/test_synthesis_reference.py",)),
    Mutant("balanced_ce_share_not_clipped", "lesiongen/training/trainers/seg.py",
           "return max(0.0, 1.0 - step / (until * total_steps))", "return 1.0 - step / (until * total_steps)",
           ("tests/test_seg_options.py::test_balanced_ce_share_falls_linearly_to_0_at_its_fraction_of_the_steps",)),
    Mutant("blended_cross_entropy_plain", "lesiongen/training/losses.py",
           "return balanced_share * balanced_cross_entropy(logits, labels) + (1 - balanced_share) * plain",
           "return plain", ("tests/test_seg_options.py::test_blended_cross_entropy_by_hand",)),
    Mutant("seg_loss_ignores_the_balanced_start", "lesiongen/training/trainers/seg.py",
           'return {**SEG_LOSS_TERMS, "ce": lambda logits, labels: blended_cross_entropy(logits, labels[:, 0], share)}',
           "return SEG_LOSSES[self.loss]",
           ("tests/test_seg_options.py::test_seg_loss_at_a_step_blends_dice_ce_cross_entropy_from_balanced_to_plain",)),
    Mutant("seg_training_loss_skips_the_balanced_start", "lesiongen/training/trainers/seg.py",
           'return deep_supervision_loss(self.trained["unet"](data), target, self.loss_terms())',
           'return deep_supervision_loss(self.trained["unet"](data), target, SEG_LOSSES[self.loss])',
           ("tests/test_seg.py::test_seg_training_loss_uses_the_balanced_start",)),
    Mutant("found_no_lesion_ignores_recall", "lesiongen/evaluation/compare.py",
           'all(c["lesion_recall"] == 0 and c["dice"] == 0 for c in with_lesions)',
           'all(c["dice"] == 0 for c in with_lesions)',
           ("tests/test_compare.py::test_found_no_lesion_needs_zero_dice_and_recall_on_every_case_with_lesions",)),
    Mutant("seg_validation_never_finds_a_failed_start", "lesiongen/training/trainers/seg.py",
           'summary["found_no_lesion"] = found_no_lesion(per_case_metrics(summary).values())',
           'summary["found_no_lesion"] = False',
           ("tests/test_seg.py::test_seg_validation_that_finds_no_lesion_says_so",)),
    Mutant("comparison_forgets_failed_folds", "lesiongen/evaluation/compare.py",
           'row["folds_without_lesions"] = sorted((failed or {}).get(strategy, []))',
           'row["folds_without_lesions"] = []',
           ("tests/test_compare.py::test_a_fold_that_found_no_validation_lesion_is_named_in_the_comparison",)),
    Mutant("demo_seg_without_balanced_start", "lesiongen/demo/pipeline.py",
           '"mirror_validation": False, "balanced_ce_until": 0.5}',
           '"mirror_validation": False}',
           ("tests/test_seg.py::test_seg_training_loss_uses_the_balanced_start",)),
    Mutant("settings_log_shows_the_typed_strings", "lesiongen/training/base.py",
           '{key: getattr(self, key) for key in values})',
           'values)',
           ("tests/test_planned_sampling.py::test_the_inpaint_trainers_edge_settings_reach_the_model_it_writes",)),
    Mutant("small_lesion_removal_takes_the_boundary", "lesiongen/models/postprocessing.py",
           "* voxel_mm3 < min_volume_mm3", "* voxel_mm3 <= min_volume_mm3",
           ("tests/test_postprocessing.py::"
            "test_remove_small_lesions_removes_the_components_below_the_volume_of_each_class",)),
    Mutant("postprocessing_choice_ignores_dice", "lesiongen/evaluation/postprocessing.py",
           'if scores[i]["dice"] >= baseline["dice"] and ', "if ",
           ("tests/test_postprocessing.py::"
            "test_the_chosen_volume_raises_lesion_f1_without_lowering_dice_and_ties_go_to_the_smaller",)),
    Mutant("predict_skips_the_postprocessing", "lesiongen/inference/run_predict.py",
           "prediction = postprocessing.apply(prediction, loaded.spacing)", "pass",
           ("tests/test_postprocessing.py::test_predict_applies_the_model_folder_s_postprocessing_unless_disabled",)),
    Mutant("stale_postprocessing_applied", "lesiongen/models/postprocessing.py",
           "if not folder.checkpoint(fold).is_file() or sha256_file(folder.checkpoint(fold)) != digest)",
           "if not folder.checkpoint(fold).is_file())",
           ("tests/test_postprocessing.py::test_a_postprocessing_chosen_for_other_checkpoints_is_not_applied",)),
    Mutant("benefit_scores_ignore_min_lesion_volume", "lesiongen/benefit.py",
           "prediction = remove_small_lesions(prediction, reference_geometry.spacing_zyx, min_lesion_volume_mm3)[0]",
           "pass",
           ("tests/test_benefit.py::"
            "test_small_predicted_lesions_are_left_out_of_the_scores_only_with_min_lesion_volume",)),
    Mutant("benefit_cv_postprocessing_not_applied", "lesiongen/benefit.py",
           'postprocessing["min_lesion_volume_mm3"])', "options.min_lesion_volume_mm3)",
           ("tests/test_postprocessing.py::"
            "test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them",)),
    Mutant("benefit_reuses_a_stale_cv_postprocessing", "lesiongen/benefit.py",
           "if stale is None and sorted(", "if sorted(",
           ("tests/test_postprocessing.py::"
            "test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them",)),
    Mutant("benefit_cv_folds_not_validated", "lesiongen/benefit.py",
           '"validate": self.fold != FOLD}', '"validate": False}',
           ("tests/test_postprocessing.py::"
            "test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them",
            "tests/test_postprocessing.py::"
            "test_cv_postprocessing_trains_the_first_seed_s_real_only_model_on_every_fold_by_default")),
    Mutant("benefit_cv_folds_validation_always_mirrored", "lesiongen/benefit.py",
           "mirror_validation=options.mirror,", "mirror_validation=True,",
           ("tests/test_postprocessing.py::"
            "test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them",
            "tests/test_postprocessing.py::"
            "test_cv_postprocessing_trains_the_first_seed_s_real_only_model_on_every_fold_by_default")),
    Mutant("benefit_cv_folds_trained_as_fold_all", "lesiongen/benefit.py",
           "(dataset, job.fold, device, options, **variant)", "(dataset, FOLD, device, options, **variant)",
           ("tests/test_postprocessing.py::"
            "test_benefit_trains_real_only_folds_and_scores_the_test_scans_with_the_volume_chosen_on_them",)),
    Mutant("benefit_parallel_command_trains_fold_all", "lesiongen/benefit.py",
           'options.dataset, self.trainer, self.fold, "-device",', 'options.dataset, self.trainer, FOLD, "-device",',
           ("tests/test_benefit.py::"
            "test_trainings_side_by_side_train_what_the_jobs_describe_a_cross_validation_fold_included",)),
    Mutant("benefit_parallel_log_named_by_the_fold_path", "lesiongen/benefit.py",
           "log = logs / f\"{job.name.replace('/', '_')}.log\"", "log = logs / f\"{job.name}.log\"",
           ("tests/test_benefit.py::"
            "test_trainings_side_by_side_train_what_the_jobs_describe_a_cross_validation_fold_included",)),
    Mutant("benefit_per_seed_difference_against_itself", "lesiongen/evaluation/benefit_report.py",
           "for value, base in zip(values, against)]", "for value, base in zip(values, values)]",
           ("tests/test_benefit.py::test_the_synthetic_strategies_are_compared_with_each_other_paired",)),
    Mutant("compare_postprocessed_table_not_postprocessed", "lesiongen/evaluation/postprocessing.py",
           "extra_args=(plans.lesion_labels, [volume]))", "extra_args=(plans.lesion_labels, [0.0]))",
           ("tests/test_postprocessing.py::"
            "test_compare_shows_the_strategies_as_predict_delivers_them_after_postprocessing",)),
    Mutant("compare_postprocesses_every_strategy", "lesiongen/evaluation/compare.py",
           "if strategy not in volumes:", "if False:",
           ("tests/test_postprocessing.py::"
            "test_compare_shows_the_strategies_as_predict_delivers_them_after_postprocessing",)),
)


def fragment_found(mutant: Mutant, root: Path = ROOT) -> bool:
    """Whether the code holds the mutant's fragment exactly once (else the mutant is stale: fix it)."""
    return (root / mutant.file).read_text().count(mutant.original) == 1


def _scratch_copy(target: Path, source_root: Path = ROOT) -> None:
    # benchmarks: some tests load a benchmark script or check a recorded result
    for name in ("lesiongen", "tests", "documentation", "benchmarks", "pyproject.toml", "README.md"):
        source = source_root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, target / name)


def _run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    env = {**__import__("os").environ, "PYTHONPATH": str(copy)}
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        code, output = -1, "timed out"
    return code, time.perf_counter() - start, output


def _apply(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.file
    text = path.read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"{mutant.name}: '{mutant.original}' occurs {count} times in {mutant.file}; fix the mutant")
    path.write_text(text.replace(mutant.original, mutant.replacement))
    py_compile.compile(str(path), doraise=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or m.name in args.only]
    if args.list:
        for m in MUTANTS:  # a fragment that the code no longer holds exactly once is marked, not silently run
            stale = "" if fragment_found(m) else "  STALE: fragment not found once"
            print(f"{m.name:<42} {m.origin:<9} {m.file}{stale}")
        return 0
    for mutant in mutants:  # every fragment must exist before anything runs
        if not fragment_found(mutant):
            raise SystemExit(f"{mutant.name}: fragment not found exactly once in {mutant.file}")
    provenance = code_version()  # of the tree as it is now, which the snapshot below copies
    with tempfile.TemporaryDirectory(prefix="lesiongen_mutants_") as scratch:
        baseline = Path(scratch) / "baseline"  # one snapshot: edits to the tree during the run change nothing
        baseline.mkdir()
        _scratch_copy(baseline)
        all_tests = tuple(sorted({t for m in mutants for t in m.tests}))
        code, seconds, output = _run_tests(baseline, all_tests, args.timeout * 2)
        print(f"baseline: {'pass' if code == 0 else 'FAIL'} ({seconds:.0f} s, {len(all_tests)} test targets)")
        if code != 0:
            print(output[-3000:])
            return 1
        results = []
        for mutant in mutants:
            copy = Path(scratch) / mutant.name
            copy.mkdir()
            _scratch_copy(copy, baseline)
            _apply(copy, mutant)
            code, seconds, output = _run_tests(copy, mutant.tests, args.timeout)
            outcome = "killed" if code != 0 else "SURVIVED"
            print(f"{outcome:<9} {mutant.name:<42} ({seconds:.0f} s)")
            results.append({"name": mutant.name, "origin": mutant.origin, "file": mutant.file,
                            "original": mutant.original, "replacement": mutant.replacement,
                            "tests": list(mutant.tests), "outcome": outcome.lower(), "seconds": round(seconds, 1),
                            "failure": output.strip().splitlines()[-1] if code != 0 and output.strip() else None})
            shutil.rmtree(copy, ignore_errors=True)
    killed = sum(r["outcome"] == "killed" for r in results)
    print(f"{killed} of {len(results)} mutants killed")
    out = args.json or ROOT / "benchmarks" / "results" / f"mutation_check_{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": {**provenance, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "python": sys.version.split()[0]},
                               "killed": killed, "total": len(results), "mutants": results}, indent=2) + "\n")
    print(f"written: {out}")
    return 0 if killed == len(results) else 2


if __name__ == "__main__":
    raise SystemExit(main())
