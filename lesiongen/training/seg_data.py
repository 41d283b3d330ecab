"""Segmentation training batches: nnU-Net-style patch sampling with foreground oversampling, batchgenerators
augmentation, in background workers when asked.

Cases are read lazily from the preprocessed blosc2 arrays (real training cases and cached synthetic ones), so a
fold never has to fit in memory. A batch's ``force_fg`` share of samples is centred on a random lesion voxel (from
the case's precomputed ``_locations.npz``); the rest is centred anywhere in the volume. Each sample comes from a
synthetic case with the probability its step's :class:`SyntheticShare` gives, else from a real one.
For the 2d configuration (``slice_axis`` set) a sample is the in-plane
patch of one slice through that centre, so the same oversampling puts a lesion into a third of the slices.

Every batch is a function of (seed, batch number) alone: its loader reseeds numpy's and Python's global generators
(which batchgenerators' transforms draw from) with ``derive_seed(seed, "batch", number)`` before drawing it, in
whichever worker makes it.
A run resumed at step k therefore sees exactly the batches k, k + 1, ... of an uninterrupted run,
with or without background workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from lesiongen.preprocessing.storage import CHECKSUMS, open_array, verify_files
from lesiongen.training.background import BackgroundBatches
from lesiongen.utilities.cropping import extract_patch
from lesiongen.utilities.files import read_json
from lesiongen.utilities.seeding import derive_seed

logger = logging.getLogger(__name__)

FOREGROUND_OVERSAMPLING = 0.33  # nnU-Net's share of patches forced onto foreground
_VERIFIED: set[tuple[str, int]] = set()  # (stem, sidecar mtime) of cases checked by this process


@dataclass
class SegCase:
    """One training case on disk: ``{stem}.b2nd`` images, ``{stem}_seg.b2nd`` labels, ``{stem}_locations.npz``,
    and ``{stem}.json`` recording their sizes and sha256 sums."""

    case_id: str
    stem: Path
    synthetic: bool = False

    def arrays(self):
        """Lazy handles on the images and labels; the files are checked against their checksums first."""
        self.verify()
        return open_array(f"{self.stem}.b2nd"), open_array(f"{self.stem}_seg.b2nd")

    def verify(self) -> None:
        """Refuse files that differ from what preprocessing (or synthesis) recorded, in one line naming the file.

        Hashing a case costs about as much as reading it once, so each process checks a case once (again only
        if its sidecar is rewritten), not once per batch.
        """
        sidecar = Path(f"{self.stem}.json")
        try:
            key = (str(self.stem), sidecar.stat().st_mtime_ns)
        except FileNotFoundError:
            logger.debug("%s: no record of %s; its files are not verified", sidecar, self.case_id)
            return
        if key in _VERIFIED:
            return
        checksums = read_json(sidecar).get(CHECKSUMS)
        if checksums is not None:
            own = {f"{self.stem.name}{end}" for end in (".b2nd", "_seg.b2nd", "_locations.npz")}
            checksums = {name: record for name, record in checksums.items() if name in own}
        verify_files(sidecar, checksums, self._advice(sidecar))
        _VERIFIED.add(key)

    def _advice(self, sidecar: Path) -> str | None:
        if self.synthetic:  # synthetic cases are made again when their record is missing
            return f"delete {sidecar} and rerun the training to make the case again"
        return None

    def lesion_voxels(self) -> np.ndarray:
        path = Path(f"{self.stem}_locations.npz")
        if not path.is_file():
            return np.zeros((0, 3), dtype=np.int64)
        with np.load(path) as locations:
            arrays = [locations[k] for k in locations.files if len(locations[k])]
        return np.concatenate(arrays) if arrays else np.zeros((0, 3), dtype=np.int64)


@dataclass(frozen=True)
class SyntheticShare:
    """The share of a batch's samples drawn from synthetic cases, per training step: ``share`` throughout, or with
    ``fade_start`` < 1, ``share`` until that fraction of the ``total_steps`` and then linearly less, towards 0 at the
    last step: the synthetic cases shape the early steps, the real ones the last (pre-training on synthetic data
    and fine-tuning on real data, in one run and one learning-rate schedule)."""

    share: float
    total_steps: int = 1
    fade_start: float = 1.0

    def at(self, step: int) -> float:
        progress = step / max(self.total_steps, 1)
        if self.fade_start >= 1.0 or progress <= self.fade_start:
            return self.share
        return self.share * max(0.0, 1.0 - progress) / (1.0 - self.fade_start)

    @property
    def mean(self) -> float:
        """The share over the whole run (the fade's triangle counts half)."""
        return self.share * (self.fade_start + (1.0 - self.fade_start) / 2)


class SegPatchLoader(DataLoader):
    """Random patches of real and synthetic cases; ``synthetic_share`` (a number: the same at every step) says what
    share of a batch's samples come from synthetic cases.

    Randomness comes from numpy's global generator, reseeded per batch (see the module docstring); with
    ``n_workers`` background processes, worker w makes batches ``first_batch + w``, ``+ n_workers``, ... in the
    round-robin order they are read back in (``BackgroundBatches``).
    """

    def __init__(self, real: list[SegCase], synthetic: list[SegCase], patch_size: list[int], batch_size: int,
                 synthetic_share: SyntheticShare | float, seed: int, first_batch: int = 0, n_workers: int = 1,
                 slice_axis: int | None = None):
        super().__init__(real + synthetic, batch_size, max(1, n_workers), seed_for_shuffle=seed, infinite=True)
        self.seed, self.first_batch, self._made = seed, first_batch, 0
        self.real, self.synthetic = real, synthetic
        self.patch_size = list(patch_size)  # 2D: the in-plane axes, in volume order
        self.slice_axis = slice_axis
        # what is cut from the volume: a 3D patch, or for 2D one slice thick along slice_axis
        self.volume_patch = list(patch_size) if slice_axis is None else \
            [*patch_size[:slice_axis], 1, *patch_size[slice_axis:]]
        if not isinstance(synthetic_share, SyntheticShare):
            synthetic_share = SyntheticShare(float(synthetic_share))
        self.synthetic_share = synthetic_share if synthetic else SyntheticShare(0.0)
        self._locations: dict[str, np.ndarray] = {}

    def _case(self, share: float) -> SegCase:
        pool = self.synthetic if np.random.random_sample() < share else self.real
        return pool[np.random.randint(len(pool))]

    def _centre(self, case: SegCase, shape: tuple[int, ...], force_fg: bool) -> np.ndarray:
        if force_fg:
            if case.case_id not in self._locations:
                self._locations[case.case_id] = case.lesion_voxels()
            voxels = self._locations[case.case_id]
            if len(voxels):
                return voxels[np.random.randint(len(voxels))]
        return np.array([np.random.randint(0, s) for s in shape])

    def next_batch_number(self) -> int:
        number = self.first_batch + self.thread_id + self._made * self.number_of_threads_in_multithreaded
        self._made += 1
        return number

    def generate_train_batch(self) -> dict:
        number = self.next_batch_number()  # the training step the batch is for
        seed = derive_seed(self.seed, "batch", number)
        np.random.seed(seed)
        random.seed(seed)  # some batchgenerators transforms draw from Python's own generator (e.g. noise variance)
        share = self.synthetic_share.at(number)
        data, seg = [], []
        for index in range(self.batch_size):
            case = self._case(share)
            images, labels = case.arrays()
            force_fg = index >= round(self.batch_size * (1 - FOREGROUND_OVERSAMPLING))
            centre = self._centre(case, labels.shape, force_fg)
            image_patch = extract_patch(images, centre, self.volume_patch, fill=0.0)
            label_patch = extract_patch(labels, centre, self.volume_patch, fill=0)
            if self.slice_axis is not None:  # the slice as a 2D image
                image_patch = image_patch.squeeze(self.slice_axis + 1)
                label_patch = label_patch.squeeze(self.slice_axis)
            data.append(image_patch)
            seg.append(label_patch[None])
        seg_array = np.maximum(np.stack(seg).astype(np.int16), 0)  # -1 (outside brain) is background for the loss
        return {"data": np.stack(data).astype(np.float32), "seg": seg_array.astype(np.float32)}


def augmentation(patch_size: list[int], anisotropic: bool) -> Compose:
    """nnU-Net's default 3D augmentation, without the elastic deformation it also leaves off; for a 2D patch its 2D
    counterpart (one in-plane rotation, mirroring of both axes)."""
    angle = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    if len(patch_size) == 2:  # batchgenerators rotates 2D data by angle_x
        angle_x, angle_y, angle_z = angle, (0.0, 0.0), (0.0, 0.0)
    else:
        # on anisotropic data rotate in-plane only, as nnU-Net does (its "do_dummy_2d" variant is not needed here)
        angle_x = angle_y = (0.0, 0.0) if anisotropic else angle
        angle_z = angle
    return Compose([
        SpatialTransform(patch_size, patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=angle_x, angle_y=angle_y, angle_z=angle_z,
                         do_scale=True, scale=(0.7, 1.4), border_mode_data="constant", border_cval_data=0,
                         order_data=3, border_mode_seg="constant", border_cval_seg=0, order_seg=1,
                         random_crop=False, p_el_per_sample=0, p_scale_per_sample=0.2, p_rot_per_sample=0.2,
                         independent_scale_for_each_axis=False),
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
        MirrorTransform(tuple(range(len(patch_size)))),
    ])


def batch_stream(loader: SegPatchLoader, transforms: Compose, num_workers: int) -> Iterator[dict]:
    """An endless iterator of augmented batches, made in ``num_workers`` background processes (0: inline); its
    ``close()`` stops the workers."""
    if num_workers <= 0:
        return _inline_batches(loader, transforms)
    return BackgroundBatches(loader, transforms, num_workers)


def _inline_batches(loader: SegPatchLoader, transforms: Compose) -> Iterator[dict]:
    while True:
        yield transforms(**next(loader))
