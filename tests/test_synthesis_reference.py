"""A guard for SYNTHESIS_VERSION: what a seed makes is compared with a recorded reference.

Synthetic training cases are cached under a key that holds ``SYNTHESIS_VERSION``; a change to what a seed and set of
models make that forgets to bump it leaves stale cases in use (copy_paste's margin fix did, until version 5). Here
the strategies whose lesion masks come from numpy draws alone (copy_paste, sphere, realmask) make two cases each
from 2-step-trained models of the tiny dataset, and the edit (label voxels exactly, edited voxels and their values
within a tolerance far above float noise across CPUs and thread counts) is compared with
``data/synthesis_reference.npz``. The learned generators (diffmask, unetmask, ganmask) are guarded with an oracle in
place of their network (a 2-step-trained one's masks are all implausible, and a thresholded network output is not
bit-stable across CPUs): the masks then follow the sphere draws, the noise seed, the sampler, the binarisation and the
plausibility gate, which is what a seed's case depends on besides the trained weights. The reference also records
its inputs (healthy scans, donor lesions, the models' configuration - spheremask's is the fold's sphere priors - and
weights, the plans' patch and spacing) so that a change upstream of synthesis is told apart from one in it.

Regenerate the reference after a deliberate change with
``LESIONGEN_UPDATE_SYNTHESIS_REFERENCE=1 python -m pytest tests/test_synthesis_reference.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, TINY_NAME
from lesiongen.cli import train as train_cli
from lesiongen.models.mask_generators import DiffMaskConfig, GANMaskConfig, UNetMaskConfig
from lesiongen.models.registry import load_trained_model
from lesiongen.preprocessing.dataset import open_preprocessed
from lesiongen.preprocessing.lesion_patches import load_lesion_patches
from lesiongen.preprocessing.storage import load_array
from lesiongen.training.base import plans_sha256
from lesiongen.training import synthetic
from lesiongen.training.synthetic import SYNTHESIS_VERSION, make_synthetic_cases

REFERENCE = Path(__file__).parent / "data" / "synthesis_reference.npz"
UPDATE = os.environ.get("LESIONGEN_UPDATE_SYNTHESIS_REFERENCE") == "1"
GUARDED = ("copy_paste", "sphere", "realmask", "diffmask", "unetmask", "ganmask")  # the last three: OracleMaskNetwork
CASES = 2
SEED = 11
# edited values differ by less than 1e-6 between 1 and 2 threads here; a change to synthesis moves them by tenths
VALUE_TOLERANCE = 1e-3
INPUT_RTOL = 1e-4


FAST_TRAINING = {"spheremask": [], "inpaint": ["--set", "sampling_steps=4"], "unetmask": [],
                 # their networks and thresholds are replaced by the oracle's
                 "diffmask": ["--set", "calibration_patches=1"], "ganmask": []}
# per learned generator: its network's name, the input part holding its randomness (None: it has none), the
# configuration its trainer starts from
ORACLES = {"diffmask": ("denoiser", "noisy", lambda priors: DiffMaskConfig(priors=priors,
                                                                           lesions_on_controls_only=True)),
           "unetmask": ("unet", None, lambda priors: UNetMaskConfig(priors=priors)),
           "ganmask": ("generator", "noise", lambda priors: GANMaskConfig(priors=priors))}


class OracleMaskNetwork(torch.nn.Module):
    """A mask generator's network replaced by arithmetic: twice the sphere cue smoothed over 3 voxels plus half the
    first channel of its random input (diffmask's noisy mask, ganmask's noise fields; unetmask has none), so a mask
    is the spheres with edges the noise decides (above 0: a logit above 0, or diffmask's clean-mask estimate, clipped
    to [-1, 1], above its threshold 0). Elementwise and pooling arithmetic only: the same masks on every CPU and
    thread count."""

    def __init__(self, offsets: dict[str, slice], random_part: str | None, clip: bool):
        super().__init__()
        self.control, self.random, self.clip = offsets["control"], random_part and offsets[random_part], clip

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        value = 2 * F.avg_pool3d(x[:, self.control], 3, stride=1, padding=1, count_include_pad=False)
        if self.random is not None:
            value = value + 0.5 * x[:, self.random][:, :1]
        return value.clamp(-1, 1) if self.clip else value


def _with_oracle(model):
    """A loaded learned mask generator with OracleMaskNetwork and the configuration its trainer starts from: what it
    makes no longer depends on 2-step-trained weights or a threshold calibrated with them."""
    if model.kind in ORACLES:
        network, random_part, config = ORACLES[model.kind]
        model.networks[network] = OracleMaskNetwork(model.input_layout.offsets(), random_part,
                                                    clip=model.kind == "diffmask")
        model.config = config(model.config.priors)
    return model


@pytest.fixture(scope="module")
def guarded_edits(tiny_preprocessed) -> tuple[dict[str, np.ndarray], dict[str, float | str]]:
    """(the edits of every guarded strategy's cases, the inputs' summary)."""
    for name, fast in FAST_TRAINING.items():
        assert train_cli.main([str(TINY.dataset_id), name, "0", "--steps", "2", *fast, "-device", "cpu"]) == 0
    dataset = open_preprocessed(TINY.dataset_id)
    train_cases = load_trained_model(TINY_NAME, "inpaint", "lesiongenPlans", 0, "cpu").provenance["train_cases"]
    edits: dict[str, np.ndarray] = {}
    healthy_square_sums: dict[str, float] = {}
    load_fold_model = synthetic._load_fold_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "_load_fold_model", lambda *args: _with_oracle(load_fold_model(*args)))
        made_sets = {strategy: make_synthetic_cases(dataset, 0, strategy, CASES, train_cases,
                                                    plans_sha256(dataset.plans), seed=SEED) for strategy in GUARDED}
    for strategy, made in made_sets.items():
        for case in made.cases:
            record = json.loads(Path(f"{case.stem}.json").read_text())
            source = record["key"]["source_healthy_case"]
            healthy = load_array(dataset.data_folder / "healthy" / f"{source}.b2nd")
            healthy_square_sums[f"healthy/{source}/square_sum"] = _square_sum(healthy)
            images, seg = load_array(f"{case.stem}.b2nd"), load_array(f"{case.stem}_seg.b2nd")
            labelled, edited = np.flatnonzero(seg > 0), np.flatnonzero(images != healthy)
            prefix = f"{strategy}/{case.case_id}"
            edits.update({f"{prefix}/label_index": labelled, f"{prefix}/label_value": seg.flat[labelled],
                          f"{prefix}/edited_index": edited, f"{prefix}/edited_value": images.flat[edited]})
    return edits, {**healthy_square_sums, **_inputs(dataset, train_cases)}


def _inputs(dataset, train_cases: list[str]) -> dict[str, float | str]:
    """Scalars (besides the healthy scans') that change when what synthesis starts from changes, not when synthesis
    itself does."""
    donors = load_lesion_patches(dataset.lesion_patch_folder, train_cases)
    inputs: dict[str, float | str] = {"donors/mask_voxels": float((donors.masks > 0).sum()),
                                      "donors/square_sum": _square_sum(donors.images)}
    for name in ("spheremask", "inpaint"):
        model = load_trained_model(TINY_NAME, name, "lesiongenPlans", 0, "cpu")
        # spheremask's: the fold's sphere priors (copy_paste and realmask draw with them too); the inpainter's: its
        # calibration and edge settings
        config = dataclasses.asdict(model.config)
        inputs[f"{name}/config/absolute_sum"] = _absolute_sum(config)
        inputs[f"{name}/config/words"] = " ".join(_words(config))
        for role, network in model.networks.items():
            inputs[f"{name}/{role}/weights_square_sum"] = sum(_square_sum(p.detach().numpy())
                                                               for p in network.parameters())
    for name in ORACLES:
        oracle = dataclasses.asdict(_with_oracle(load_trained_model(TINY_NAME, name, "lesiongenPlans", 0,
                                                                    "cpu")).config)
        inputs.update({f"{name}/oracle_config/absolute_sum": _absolute_sum(oracle),
                       f"{name}/oracle_config/words": " ".join(_words(oracle))})
    inputs.update({"plans/lesion_patch_size": float(np.prod(dataset.plans.lesion_patch_size)),
                   "plans/target_spacing": float(np.prod(dataset.plans.target_spacing))})
    return inputs


def _square_sum(values: np.ndarray) -> float:
    return float(np.square(values.astype(np.float64)).sum())


def _absolute_sum(tree) -> float:
    """Sum of the absolute values of every number in a nest of dicts and lists."""
    if isinstance(tree, dict):
        return sum(_absolute_sum(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_absolute_sum(v) for v in tree)
    return abs(float(tree)) if isinstance(tree, (int, float)) else 0.0


def _words(tree) -> list[str]:
    """Every string in a nest of dicts and lists, keys included, in order."""
    if isinstance(tree, dict):
        return [word for key, value in tree.items() for word in (str(key), *_words(value))]
    if isinstance(tree, (list, tuple)):
        return [word for value in tree for word in _words(value)]
    return [tree] if isinstance(tree, str) else []


def _write_reference(edits: dict[str, np.ndarray], inputs: dict[str, float | str]) -> None:
    REFERENCE.parent.mkdir(exist_ok=True)
    meta = {"synthesis_version": SYNTHESIS_VERSION, "inputs": inputs}
    np.savez_compressed(REFERENCE, meta=np.array(json.dumps(meta, sort_keys=True)), **edits)


def _read_reference() -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(REFERENCE, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return json.loads(str(arrays.pop("meta"))), arrays


REGENERATE = "LESIONGEN_UPDATE_SYNTHESIS_REFERENCE=1 python -m pytest tests/test_synthesis_reference.py"


def _same_input(value: float | str | None, recorded: float | str | None) -> bool:
    if isinstance(value, float) and isinstance(recorded, float):
        return bool(np.isclose(value, recorded, rtol=INPUT_RTOL, atol=0))
    return value == recorded


def edit_differences(edits: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[str]:
    """How the edits differ from the reference's: labels and edited voxels exactly, values within the tolerance."""
    if set(edits) != set(reference):
        return [f"cases {sorted(set(edits) ^ set(reference))} made in only one of them"]
    problems = []
    for key, value in sorted(edits.items()):
        stored = reference[key]
        if key.endswith("/edited_value") and stored.shape == value.shape:
            largest = float(np.abs(value.astype(np.float64) - stored).max(initial=0))
            if largest > VALUE_TOLERANCE:
                problems.append(f"{key} by up to {largest:.3g}")
        elif not np.array_equal(value, stored):
            problems.append(key)
    return problems


def test_what_a_seed_makes_matches_the_reference_of_its_synthesis_version(guarded_edits):
    edits, inputs = guarded_edits
    if UPDATE:
        _write_reference(edits, inputs)
        pytest.skip(f"{REFERENCE} written (SYNTHESIS_VERSION {SYNTHESIS_VERSION})")
    meta, reference = _read_reference()
    if meta["synthesis_version"] != SYNTHESIS_VERSION:
        pytest.fail(f"SYNTHESIS_VERSION is {SYNTHESIS_VERSION}, the reference was made at "
                    f"{meta['synthesis_version']}: regenerate it with {REGENERATE}")
    moved = [k for k in sorted(set(inputs) | set(meta["inputs"]))
             if not _same_input(inputs.get(k), meta["inputs"].get(k))]
    if moved:
        pytest.fail(f"what synthesis starts from changed ({', '.join(moved[:5])}), upstream of it: check that "
                    f"synthesis did not change as well, then regenerate the reference with {REGENERATE}")
    differences = edit_differences(edits, reference)
    assert not differences, (
        f"synthetic cases differ from the reference of SYNTHESIS_VERSION {SYNTHESIS_VERSION} "
        f"({', '.join(differences[:6])}) although what they start from did not: what a seed makes changed, so "
        f"cached cases would be reused wrongly. Bump SYNTHESIS_VERSION in lesiongen/training/synthetic.py, then "
        f"regenerate with {REGENERATE}")


def test_a_changed_edit_value_or_voxel_is_a_difference():
    """The comparison itself: float noise passes, a moved value, an extra voxel or a relabelled voxel does not."""
    reference = {"copy_paste/syn_000/edited_index": np.array([3, 5]), "copy_paste/syn_000/edited_value": np.array(
        [0.5, -1.0], np.float32), "copy_paste/syn_000/label_index": np.array([3]),
        "copy_paste/syn_000/label_value": np.array([1], np.int8)}
    same = {**reference, "copy_paste/syn_000/edited_value": np.array([0.5 + 1e-5, -1.0], np.float32)}
    assert edit_differences(same, reference) == []
    moved = {**reference, "copy_paste/syn_000/edited_value": np.array([0.55, -1.0], np.float32)}
    assert edit_differences(moved, reference) == ["copy_paste/syn_000/edited_value by up to 0.05"]
    extra = {**reference, "copy_paste/syn_000/edited_index": np.array([3, 5, 6])}
    assert edit_differences(extra, reference) == ["copy_paste/syn_000/edited_index"]
    relabelled = {**reference, "copy_paste/syn_000/label_value": np.array([2], np.int8)}
    assert edit_differences(relabelled, reference) == ["copy_paste/syn_000/label_value"]
    assert edit_differences({}, reference)[0].startswith("cases")
