"""Brain masks for scans that are not skull-stripped, from a ``seg`` model trained on a brain-extraction task.

Brain extraction is segmentation with one foreground class (nnU-Net treats it so, and HD-BET is such a network):
train ``seg`` on a dataset whose labels are brain masks (``lesiongen_make_demo_dataset --whole_head`` writes one),
then ``lesiongen_predict -m brainmask`` writes the masks, and ``--brain_model`` lets ``synth``, ``remove`` and
``seg`` extract the brain of each scan themselves instead of taking every nonzero voxel as brain. The network's
label map is cleaned the way brain-extraction tools do: the largest 26-connected piece, its cavities filled (the
ventricles belong to the brain mask).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesiongen.inference.segment import segment
from lesiongen.utilities.components import label_components
from lesiongen.utilities.errors import LesiongenError


def check_brain_extraction_labels(labels: dict[str, int], source: object) -> None:
    """A brain-extraction model segments background and exactly one foreground class."""
    foreground = sorted(name for name, value in labels.items() if int(value) != 0)
    if len(foreground) != 1:
        raise LesiongenError(f"{source}: not a brain-extraction model: its labels {labels} have "
                             f"{len(foreground)} foreground classes, brain extraction needs exactly one")


def clean_brain_mask(label: np.ndarray) -> np.ndarray:
    """The largest 26-connected foreground piece of ``label`` with its enclosed holes filled, as uint8 0/1."""
    components, count = label_components(label > 0)
    if count == 0:
        return np.zeros(label.shape, dtype=np.uint8)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(largest).astype(np.uint8)


def extract_brain(images: np.ndarray, spacing: list[float], segmenters: list, mirror: bool = True) -> np.ndarray:
    """The brain mask (uint8, on the input grid; all zeros when the model finds no brain) of a (c, z, y, x) scan with
    brain-extraction ``segmenters`` (one per fold: their probabilities are averaged). The whole scan is the
    network's input: no brain mask crops it."""
    if not segmenters:
        raise ValueError("extract_brain needs at least one segmenter")
    label, _, _ = segment(images, spacing, segmenters, brain_mask=None, mirror=mirror)
    return clean_brain_mask(label)
