"""Where lesiongen keeps data, as in nnU-Net: three environment variables with logged defaults.

``lesiongen_raw``            raw datasets (read only for lesiongen)
``lesiongen_preprocessed``   fingerprints, plans, preprocessed arrays
``lesiongen_results``        trained models
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path.home() / "lesiongen_data"
_DEFAULTS = {
    "lesiongen_raw": DEFAULT_ROOT / "raw",
    "lesiongen_preprocessed": DEFAULT_ROOT / "preprocessed",
    "lesiongen_results": DEFAULT_ROOT / "results",
}
_announced: set[str] = set()


def _folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if value:
        return Path(value).expanduser()
    default = _DEFAULTS[variable]
    if variable not in _announced:
        # said once per process so a run's log shows where its data went
        logger.info("%s is not set; using %s", variable, default)
        _announced.add(variable)
    return default


def raw_root() -> Path:
    return _folder("lesiongen_raw")


def preprocessed_root() -> Path:
    return _folder("lesiongen_preprocessed")


def results_root() -> Path:
    return _folder("lesiongen_results")
