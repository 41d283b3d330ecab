"""Where lesiongen keeps data, as in nnU-Net: three environment variables with logged defaults.

``lesiongen_raw``            raw datasets (read only for lesiongen)
``lesiongen_preprocessed``   fingerprints, plans, preprocessed arrays
``lesiongen_results``        trained models
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def results_root_at(folder: Path) -> Iterator[Path]:
    """Within the block, and in the subprocesses started in it, trained models go to ``folder``: for models that
    belong to one report rather than to the dataset's results (``lesiongen_benefit --schedule_check`` and
    ``--data_check``)."""
    previous = os.environ.get("lesiongen_results")
    os.environ["lesiongen_results"] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            del os.environ["lesiongen_results"]
        else:
            os.environ["lesiongen_results"] = previous
