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
