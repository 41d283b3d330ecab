"""CarveMix-style copy_paste on constructed patches with a known answer: the pasted lesion keeps its offset from its
own surroundings (per channel), lands in the label map with its shape, and nothing else of the scan changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lesiongen.inference.copy_paste import MAX_MARGIN_VOXELS, copy_paste
from lesiongen.planning.plans import Categorical
from lesiongen.preprocessing.lesion_patches import LesionPatches

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
