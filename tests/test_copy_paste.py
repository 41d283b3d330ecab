"""CarveMix-style copy_paste on constructed patches with a known answer: the pasted lesion keeps its offset from its
own surroundings (per channel), lands in the label map with its shape, and nothing else of the scan changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lesiongen.inference.copy_paste import MAX_MARGIN_VOXELS, copy_paste, donor_lesions
from lesiongen.planning.plans import Categorical
from lesiongen.preprocessing.lesion_patches import LesionPatches
from lesiongen.utilities.cropping import insert_patch

PATCH = [12, 12, 12]
DONOR_BACKGROUND = np.array([0.5, -1.0], np.float32)
DONOR_LESION = np.array([1.5, -3.0], np.float32)  # offsets to the surroundings: +1.0 and -2.0
RECIPIENT = np.array([2.0, 0.25], np.float32)


@pytest.fixture(scope="module")
def one_lesion_prior(tiny_plans):
    return {"1": dataclasses.replace(tiny_plans.sphere_priors["1"], lesions_per_case=Categorical({"1": 1.0}))}


def _donor() -> LesionPatches:
    images = np.broadcast_to(DONOR_BACKGROUND[:, None, None, None], (2, *PATCH)).copy()
    mask = np.zeros(PATCH, np.uint8)
    mask[5:8, 5:8, 4:8] = 1  # 36 voxels around the patch centre
    images[:, mask > 0] = DONOR_LESION[:, None]
    return LesionPatches(images[None], mask[None], np.ones((1, *PATCH), bool), None, ["donor_case"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pasted_lesion_keeps_its_offset_to_the_recipients_surroundings(one_lesion_prior, seed):
    scan = np.broadcast_to(RECIPIENT[:, None, None, None], (2, 24, 24, 24)).copy()
    brain = np.ones(scan.shape[1:], bool)
    out, label, records = copy_paste(scan, brain, None, _donor(), one_lesion_prior, PATCH, (1.0, 1.0, 1.0),
                                     np.random.default_rng(seed))
    assert len(records) == 1 and records[0]["donor_case"] == "donor_case"
    assert 1 <= records[0]["margin_voxels"] <= MAX_MARGIN_VOXELS
    assert label.sum() == records[0]["voxels_model"] and set(np.unique(label)) == {0, 1}
    zs, ys, xs = np.nonzero(label)  # the donor's lesion, translated (these seeds place it wholly inside)
    assert records[0]["voxels_model"] == 36 and [np.ptp(a) + 1 for a in (zs, ys, xs)] == [3, 3, 4]
    expected = scan.copy()
    expected[:, label > 0] += (DONOR_LESION - DONOR_BACKGROUND)[:, None]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.array_equal(scan, np.broadcast_to(RECIPIENT[:, None, None, None], scan.shape))  # input untouched


@pytest.mark.parametrize("recorded", [True, False])
def test_pasted_lesions_and_their_carved_margin_stay_off_tissue_real_lesions_avoid(one_lesion_prior, recorded):
    """A recipient with CSF stripes (every third x column): with the lesions' tissue recorded (no CSF), the pasted
    label never covers CSF and the recipient's CSF voxels stay exactly as they were; without it, the paste covers
    them (as before)."""
    prior = dataclasses.replace(one_lesion_prior["1"], tissue_probability=Categorical({"2": 1.0}), neighbourhood=None,
                                lesion_tissue={"2": 1.0} if recorded else None)
    scan = np.broadcast_to(RECIPIENT[:, None, None, None], (2, 24, 24, 24)).copy()
    brain = np.ones(scan.shape[1:], bool)
    tissue = np.full(brain.shape, 2, np.uint8)
    tissue[:, :, ::3] = 3
    csf = tissue == 3
    pasted = 0
    for seed in range(3):
        out, label, records = copy_paste(scan, brain, tissue, _donor(), {"1": prior}, PATCH, (1.0, 1.0, 1.0),
                                         np.random.default_rng(seed))
        pasted += len(records)
        if recorded:
            assert not (label > 0)[csf].any()
            np.testing.assert_array_equal(out[:, csf], scan[:, csf])
            if records:  # the 4 voxels wide lesion, cut by the stripes: its largest piece, 2 columns wide
                assert records[0]["voxels_model"] == 18 and (label > 0).sum() == 18
        else:
            assert (label > 0)[csf].any() and not np.array_equal(out[:, csf], scan[:, csf])
    assert pasted == 3


def _pastes_beside_a_donor_brain_edge(prior, first_outside: int):
    """Per seed 0..5: (recipient scan, the clean donor's paste, its label map, its margin, the paste of a donor
    whose brain ends before column ``first_outside``, holding -10 from there on)."""
    clean, cut = _donor(), _donor()
    cut.images[0][:, :, :, first_outside:] = -10.0
    cut.brain[0][:, :, first_outside:] = False
    scan = np.broadcast_to(RECIPIENT[:, None, None, None], (2, 24, 24, 24)).copy()
    brain = np.ones(scan.shape[1:], bool)
    for seed in range(6):
        expected, label, records = copy_paste(scan, brain, None, clean, prior, PATCH, (1.0, 1.0, 1.0),
                                              np.random.default_rng(seed))
        out, _, _ = copy_paste(scan, brain, None, cut, prior, PATCH, (1.0, 1.0, 1.0), np.random.default_rng(seed))
        yield scan, expected, label, records[0]["margin_voxels"], out


def test_the_donor_side_of_the_harmonisation_shell_is_cut_to_the_donors_brain(one_lesion_prior):
    """The donor patch's last x column lies outside its brain and holds -10: it falls in the shell of a margin of 2
    or 3 voxels (beyond the ramp), so counted it would shift the pasted intensities; cut to the donor's brain, the
    paste is the clean donor's."""
    margins = set()
    for _, expected, _, margin, out in _pastes_beside_a_donor_brain_edge(one_lesion_prior, PATCH[2] - 1):
        np.testing.assert_allclose(out, expected, atol=1e-6)
        margins.add(margin)
    assert margins & {2, 3}


def test_the_carved_margin_takes_every_width_from_one_to_the_largest(one_lesion_prior):
    scan = np.broadcast_to(RECIPIENT[:, None, None, None], (2, 24, 24, 24)).copy()
    brain = np.ones(scan.shape[1:], bool)
    margins = {copy_paste(scan, brain, None, _donor(), one_lesion_prior, PATCH, (1.0, 1.0, 1.0),
                          np.random.default_rng(seed))[2][0]["margin_voxels"] for seed in range(30)}
    assert margins == set(range(1, MAX_MARGIN_VOXELS + 1))


def test_a_later_paste_keeps_the_labels_of_the_lesions_pasted_before(one_lesion_prior):
    """Two lesions in a 16-voxel scan: their 12-voxel patches overlap, so the second patch's empty voxels lie over
    the first lesion. The label map is the union of the drawn lesions, each placed alone at its centre (the same
    draws: copy_paste takes them from donor_lesions with the same generator)."""
    two = {"1": dataclasses.replace(one_lesion_prior["1"], lesions_per_case=Categorical({"2": 1.0}))}
    scan = np.broadcast_to(RECIPIENT[:, None, None, None], (2, 16, 16, 16)).copy()
    brain = np.ones(scan.shape[1:], bool)
    for seed in range(3):
        _, label, records = copy_paste(scan, brain, None, _donor(), two, PATCH, (1.0, 1.0, 1.0),
                                       np.random.default_rng(seed))
        union = np.zeros(brain.shape, bool)
        for drawn in donor_lesions(brain, None, _donor(), two, PATCH, (1.0, 1.0, 1.0), np.random.default_rng(seed)):
            union |= insert_patch(np.zeros(brain.shape, bool), drawn.lesion > 0, drawn.centre)
        assert len(records) == 2 and np.array_equal(label > 0, union)


def test_the_carved_margin_carries_no_voxel_from_outside_the_donors_brain(one_lesion_prior):
    """The donor's brain ends two columns past its lesion, where its patch holds -10: the ramp of a margin of 2 or 3
    voxels reaches there, and the recipient keeps its own voxels there instead of blending in the donor's
    background; inside the donor's brain the paste is the clean donor's."""
    widths = set()
    for scan, expected, label, margin, out in _pastes_beside_a_donor_brain_edge(one_lesion_prior, 9):
        outside = np.zeros(label.shape, bool)
        outside[:, :, np.nonzero(label)[2].max() + 2:] = True  # the donor's x >= 9, its lesion ending at x = 7
        np.testing.assert_allclose(out[:, outside], scan[:, outside])
        np.testing.assert_allclose(out[:, ~outside], expected[:, ~outside], atol=1e-6)
        widths.add(margin)
    assert widths & {2, 3}
