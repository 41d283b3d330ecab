"""Lesion placement by the tissue real lesions border: shell shares by hand, the bank's fit, and placements that
reproduce a known neighbourhood distribution."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from lesiongen.fingerprint.lesions import SHELL_MM, analyse_lesions
from lesiongen.inference.placement import (LESION_TISSUE_MIN_SHARE, NEIGHBOURHOOD_FLOOR, avoided_tissue,
                                           keep_on_lesion_tissue, lesion_tissue_classes, neighbourhood_factor,
                                           neighbourhood_shares, placement_weights, shell_kernel)
from lesiongen.planning.plans import Categorical, NeighbourhoodBank
from lesiongen.planning.priors import NEIGHBOURHOOD_MIN_BANDWIDTH, fit_lesion_tissue, fit_neighbourhood_bank

GM, WM, CSF = 1, 2, 3


def _offsets_within(radius: float, inner: float = -1.0) -> list[tuple[int, int, int]]:
    """Integer offsets at distance (inner, radius] from the origin, counted one by one (1 mm voxels)."""
    r = int(np.ceil(radius))
    return [o for o in itertools.product(range(-r, r + 1), repeat=3)
            if inner < np.sqrt(sum(c * c for c in o)) <= radius]


def test_fingerprint_records_the_tissue_shares_of_a_lesions_shell():
    label = np.zeros((12, 12, 12), np.uint8)
    label[6, 6, 6] = 1
    tissue = np.full(label.shape, WM, np.uint8)
    tissue[:, :, 8:] = CSF  # two voxels to the lesion's right: the shell (3 mm) reaches 1 mm into it
    (lesion,) = analyse_lesions(label, (1.0, 1.0, 1.0), tissue=tissue)
    shell = [o for o in _offsets_within(SHELL_MM) if o != (0, 0, 0)]
    in_csf = sum(1 for o in shell if 6 + o[2] >= 8)
    assert lesion.shell_tissue == pytest.approx({"2": 1 - in_csf / len(shell), "3": in_csf / len(shell)})
    assert (in_csf, len(shell)) == (22, 122)  # offsets at x >= 2 within 3 mm: 21 at x = 2, 1 at x = 3
    assert analyse_lesions(label, (1.0, 1.0, 1.0))[0].shell_tissue is None  # no tissue map, no shares


def test_bank_keeps_the_shares_and_widens_the_kernel_by_scotts_rule():
    @dataclasses.dataclass
    class Lesion:
        shell_tissue: dict | None
        volume_mm3: float

    shares = [0.0, 0.2, 0.4, 0.6, 0.8]
    lesions = [Lesion({"2": 1 - s, "3": s}, v) for s, v in zip(shares, [4.19, 33.5, 113.1, 268.1, 523.6])]
    bank = fit_neighbourhood_bank(lesions)
    assert bank.tissue_classes == [2, 3] and bank.shell_mm == SHELL_MM
    assert np.asarray(bank.shares)[:, 1] == pytest.approx(shares)
    assert bank.inner_radius_mm == pytest.approx(3.0, abs=0.01)  # median volume 113.1 mm3: a 3 mm sphere
    spread = float(np.std(shares, ddof=1))  # the same in both columns
    assert bank.bandwidth == pytest.approx(spread * 5 ** (-1 / 6))
    same = fit_neighbourhood_bank([Lesion({"2": 1.0}, 10.0)] * 4)
    assert same.bandwidth == NEIGHBOURHOOD_MIN_BANDWIDTH  # no spread: the floor
    assert fit_neighbourhood_bank([Lesion(None, 10.0)]) is None and fit_neighbourhood_bank([]) is None
    assert fit_neighbourhood_bank([Lesion({"0": 1.0}, 10.0)]) is None  # tissue 0 only: no tissue to border


def test_demo_plans_carry_a_neighbourhood_bank(tiny_plans):
    bank = tiny_plans.sphere_priors["1"].neighbourhood
    assert bank is not None and bank.tissue_classes == sorted(tiny_plans.tissue_labels.values())
    assert np.asarray(bank.shares).sum(axis=1) == pytest.approx(1.0, abs=1e-3)  # shares kept to 4 digits


def test_shell_kernel_and_shares_count_the_voxels_of_the_shell():
    kernel = shell_kernel((1.0, 1.0, 1.0), 2.0, 1.5)
    assert int(kernel.sum()) == len(_offsets_within(3.5, inner=2.0))
    assert shell_kernel((2.0, 1.0, 1.0), 2.0, 1.5).shape == (5, 9, 9)  # 3.5 mm: 2 voxels of 2 mm, 4 of 1 mm
    brain = np.ones((15, 15, 15), bool)
    brain[0] = False
    tissue = np.full(brain.shape, WM, np.uint8)
    tissue[:, :, 10:] = CSF
    bank = NeighbourhoodBank([WM, CSF], [[1.0, 0.0]], inner_radius_mm=2.0, shell_mm=1.5, bandwidth=0.1)
    shares = neighbourhood_shares(brain, tissue, (1.0, 1.0, 1.0), bank)
    coords = [tuple(c) for c in np.argwhere(brain)]
    for centre in [(7, 7, 7), (1, 7, 7), (7, 7, 13)]:  # inside; the shell cut by the missing slice; in the CSF
        shell = [tuple(np.add(centre, o)) for o in _offsets_within(3.5, inner=2.0)]
        shell = [v for v in shell if all(0 <= c < 15 for c in v) and brain[v]]
        in_csf = sum(1 for v in shell if tissue[v] == CSF) / len(shell)
        assert shares[coords.index(centre)] == pytest.approx([1 - in_csf, in_csf], abs=1e-5)


def test_factor_is_the_ratio_of_the_real_to_the_placed_neighbourhood_density():
    # candidates: 90 % at share 0, 10 % at share 0.5 (equal weights); real lesions: all at 0.5
    shares = np.array([[0.0]] * 90 + [[0.5]] * 10)
    bank = NeighbourhoodBank([CSF], [[0.5]], inner_radius_mm=1.0, shell_mm=1.0, bandwidth=0.05)
    factor = neighbourhood_factor(shares, np.full(100, 0.01), bank)
    assert factor[-1] == 1.0  # the largest ratio
    # at 0: real density exp(-50) of the peak, placed density 9 x that at 0.5 (to exp(-50)): ratio / 9 / e^50
    assert factor[0] == NEIGHBOURHOOD_FLOOR
    # real lesions at 0 and at 0.5 equally: each candidate share gets half the placement after the factor
    bank = dataclasses.replace(bank, shares=[[0.0], [0.5]])
    factor = neighbourhood_factor(shares, np.full(100, 0.01), bank)
    placed = factor / factor.sum()
    assert placed[:90].sum() == pytest.approx(0.5, abs=1e-6)


def _slab_scan():
    brain = np.ones((20, 20, 20), bool)
    tissue = np.full(brain.shape, WM, np.uint8)
    tissue[:, :, 16:] = CSF  # a ventricle-like slab along one side
    return brain, tissue


@pytest.mark.parametrize("target", [0.1, 0.3])
def test_placed_lesions_border_the_tissue_real_ones_border(tiny_plans, target):
    brain, tissue = _slab_scan()
    bank = NeighbourhoodBank([WM, CSF], [[1 - target, target]] * 5, inner_radius_mm=2.0, shell_mm=2.0,
                             bandwidth=0.05)
    prior = dataclasses.replace(tiny_plans.sphere_priors["1"], location_bins=1, location_histogram=[1.0],
                                tissue_probability=Categorical({str(WM): 1.0}), neighbourhood=bank)
    shares = neighbourhood_shares(brain, tissue, (1.0, 1.0, 1.0), bank)[:, 1]
    weights = placement_weights(brain, tissue, prior, (1.0, 1.0, 1.0))
    without = placement_weights(brain, tissue, dataclasses.replace(prior, neighbourhood=None), (1.0, 1.0, 1.0))
    assert float(without @ shares) < 0.06  # by location and tissue alone, most centres border no CSF
    # the candidates' own density is smoothed by the kernel too (so no single voxel takes every lesion): near, not at
    assert float(weights @ shares) == pytest.approx(target, abs=0.05)
    assert float(weights[tissue[brain] == CSF].sum()) == pytest.approx(0.0, abs=1e-3)  # still in white matter


def test_factor_is_the_same_with_many_tissue_classes():
    # twelve classes exceed the one-integer-per-row code (the rows' own unique is used): same factor as one class
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 1, (200, 1))
    many = np.hstack([np.zeros((200, 11)), one])
    bank = NeighbourhoodBank([3], [[0.2], [0.7]], inner_radius_mm=1.0, shell_mm=1.0, bandwidth=0.05)
    wide = dataclasses.replace(bank, tissue_classes=list(range(1, 13)), shares=[[0.0] * 11 + [0.2], [0.0] * 11 + [0.7]])
    weights = rng.uniform(0, 1, 200)
    assert neighbourhood_factor(many, weights, wide) == pytest.approx(neighbourhood_factor(one, weights, bank))


def test_demo_report_names_what_the_lesions_border(tiny_plans, tmp_path):
    from types import SimpleNamespace

    from lesiongen.demo.pipeline import demo_report

    bank = NeighbourhoodBank([1, 2, 3], [[0.2, 0.7, 0.1], [0.0, 0.9, 0.1]], inner_radius_mm=2.0, shell_mm=3.0,
                             bandwidth=0.1)
    plans = dataclasses.replace(tiny_plans, tissue_labels={"GM": 1, "WM": 2, "CSF": 3}, sphere_priors={
        "1": dataclasses.replace(tiny_plans.sphere_priors["1"], neighbourhood=bank)})
    counts = {"done": 0, "skipped": 0, "lesion_patches": 0}
    lines = demo_report("demo", SimpleNamespace(cases=[]), plans, counts, tmp_path)
    assert "    its lesions' 3 mm shells: GM 10%, WM 80%, CSF 10%" in lines


# ------------------------------------------------------------------------------------- what a lesion may cover
def test_fingerprint_and_prior_record_the_tissue_under_the_lesions():
    label = np.zeros((12, 12, 12), np.uint8)
    label[1:3, 1:3, 1:3] = 1  # 8 voxels, all white matter
    label[6:9, 6:9, 6:9] = 1  # 27 voxels, the slab x = 8 (9 of them) in grey matter
    tissue = np.full(label.shape, WM, np.uint8)
    tissue[:, :, 8:] = GM
    small, large = analyse_lesions(label, (1.0, 1.0, 1.0), tissue=tissue)
    assert small.lesion_tissue == {"2": 1.0} and small.tissue_class == WM
    assert large.lesion_tissue == pytest.approx({"1": 9 / 27, "2": 18 / 27}) and large.tissue_class == WM
    assert fit_lesion_tissue([small, large]) == pytest.approx({"1": 9 / 35, "2": 26 / 35})  # weighted by voxels
    assert analyse_lesions(label, (1.0, 1.0, 1.0))[0].lesion_tissue is None  # no tissue map, no shares
    assert fit_lesion_tissue([small, dataclasses.replace(large, lesion_tissue=None)]) is None  # an older fingerprint


def test_inserted_lesions_may_cover_the_tissue_classes_real_lesions_cover(tiny_plans):
    def prior(shares):
        return dataclasses.replace(tiny_plans.sphere_priors["1"], lesion_tissue=shares)

    rare = LESION_TISSUE_MIN_SHARE * 0.9
    assert lesion_tissue_classes(prior({"1": 0.3, "2": 0.7 - rare, "3": rare})) == [GM, WM]
    assert lesion_tissue_classes(prior({"2": 1 - LESION_TISSUE_MIN_SHARE, "3": LESION_TISSUE_MIN_SHARE})) == [WM, CSF]
    assert lesion_tissue_classes(prior({"2": 1.0}), tissue_classes=[GM]) == [GM, WM]  # where a caller asked for them
    assert lesion_tissue_classes(prior(None)) is None  # plans without it: no restriction
    assert tiny_plans.sphere_priors["1"].lesion_tissue is not None  # planning records it for the demo


def test_a_mask_is_kept_off_other_tissue_as_its_largest_piece():
    tissue = np.full((9, 9, 9), WM, np.uint8)
    tissue[:, :, 3] = CSF  # a ventricle wall across the mask
    mask = np.zeros(tissue.shape, np.uint8)
    mask[3:6, 3:6, 1:8] = 2  # columns 1-2 left of the wall (18 voxels), 4-7 right of it (36 voxels)
    np.testing.assert_array_equal(avoided_tissue(tissue, [GM, WM]), tissue == CSF)
    kept = keep_on_lesion_tissue(mask, avoided_tissue(tissue, [GM, WM]))
    expected = np.zeros_like(mask)
    expected[3:6, 3:6, 4:8] = 2  # the larger piece, its class value kept
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(keep_on_lesion_tissue(mask, avoided_tissue(tissue, [WM, CSF])), mask)  # as it was
    assert avoided_tissue(None, [WM]) is None and avoided_tissue(tissue, None) is None
    assert keep_on_lesion_tissue(mask, None) is mask
