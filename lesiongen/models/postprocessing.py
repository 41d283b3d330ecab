"""A seg model's postprocessing, nnU-Net style: decided on its folds' validation cases, stored in the model folder
(``postprocessing.json``), applied by ``lesiongen_predict -m seg``.

The one rule: predicted lesions (26-connected components of one class, :mod:`lesiongen.utilities.components`)
smaller than ``min_lesion_volume_mm3`` become background. nnU-Net's own rule, keeping only the largest component,
would delete every lesion but one; what a small lesion dataset's networks get wrong instead is many specks of a few
voxels. How the volume is chosen: :mod:`lesiongen.evaluation.postprocessing`.

The file records the sha256 of the checkpoints whose validation chose the volume. When one of them has changed (the
fold was retrained), the choice is stale and is not applied: a warning says so and names the command that renews it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from lesiongen.models.folder import ModelFolder
from lesiongen.utilities.components import label_components
from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json
from lesiongen.utilities.provenance import sha256_file

logger = logging.getLogger(__name__)

POSTPROCESSING_JSON = "postprocessing.json"
DETERMINE_COMMAND = "lesiongen_determine_postprocessing"


@dataclass(frozen=True)
class Postprocessing:
    min_lesion_volume_mm3: float = 0.0  # 0: nothing removed

    def apply(self, labels: np.ndarray, spacing: list[float] | tuple[float, ...]) -> np.ndarray:
        """``labels`` (z, y, x) with every lesion below the volume set to background; spacing in array order."""
        return remove_small_lesions(labels, spacing, self.min_lesion_volume_mm3)[0]


def remove_small_lesions(labels: np.ndarray, spacing: list[float] | tuple[float, ...],
                         min_volume_mm3: float) -> tuple[np.ndarray, int]:
    """(a copy of ``labels`` without the lesions of any class smaller than ``min_volume_mm3``, how many went)."""
    result = np.array(labels, copy=True)
    if min_volume_mm3 <= 0:
        return result, 0
    voxel_mm3 = float(np.prod(spacing))
    removed = 0
    for value in np.unique(result):
        if value == 0:
            continue
        ids, n = label_components(result == value)
        too_small = np.bincount(ids.ravel(), minlength=n + 1) * voxel_mm3 < min_volume_mm3
        too_small[0] = False
        removed += int(too_small.sum())
        result[too_small[ids]] = 0
    return result, removed


def read_postprocessing(folder: ModelFolder) -> tuple[Postprocessing, dict, str | None] | None:
    """(the folder's postprocessing, the record it is stored in, the first fold whose checkpoint is not the one it was
    chosen for, else None); None without ``postprocessing.json``. A file that cannot be read is an error naming it."""
    path = folder.path / POSTPROCESSING_JSON
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        volume = float(record["min_lesion_volume_mm3"])
        checkpoints = dict(record["checkpoints"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise LesiongenError(f"{path}: not a postprocessing file ({type(exc).__name__}: {exc}); rerun "
                             f"{DETERMINE_COMMAND} or delete it") from None
    if not math.isfinite(volume) or volume < 0:
        raise LesiongenError(f"{path}: min_lesion_volume_mm3 {volume} is not a volume; rerun {DETERMINE_COMMAND}")
    stale = next((fold for fold, digest in checkpoints.items()
                  if not folder.checkpoint(fold).is_file() or sha256_file(folder.checkpoint(fold)) != digest), None)
    return Postprocessing(volume), record, stale


def load_postprocessing(folder: ModelFolder) -> Postprocessing | None:
    """The folder's postprocessing; None without ``postprocessing.json`` or when it was chosen for checkpoints
    that have changed since (with a warning). A file that cannot be read is an error naming it."""
    found = read_postprocessing(folder)
    if found is None:
        return None
    postprocessing, _, stale = found
    if stale is not None:
        logger.warning("%s: chosen for another fold_%s/%s than the one there now; not applied (rerun %s)",
                       folder.path / POSTPROCESSING_JSON, stale, folder.checkpoint(stale).name, DETERMINE_COMMAND)
        return None
    return postprocessing
