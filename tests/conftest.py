"""Shared fixtures: a tiny procedural dataset in the raw layout, and isolated lesiongen folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from lesiongen.utilities.parallel import thread_share, usable_cores


def _share_threads_between_xdist_workers() -> None:
    """Under ``pytest -n N`` each worker, and the console scripts it starts, gets its share of the cores (as
    ``lesiongen_benefit --parallel`` gives its trainings); before numpy and torch are imported, so that they use it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        os.environ.update(thread_share(workers))


_share_threads_between_xdist_workers()

import pytest  # noqa: E402

from lesiongen.demo.phantom import DemoConfig, write_demo_dataset  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int | None:
    """``-n auto``: one worker per core this process may use (a container's CPU limit included), unless
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` says otherwise (pytest-xdist reads it)."""
    return None if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else usable_cores()


@pytest.fixture(autouse=True)
def restore_logging():
    """A CLI call points logging at the captured stderr of its test; later tests must not write to a closed stream."""
    root, own = logging.getLogger(), logging.getLogger("lesiongen")
    handlers, level, own_level = root.handlers[:], root.level, own.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    own.setLevel(own_level)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = DemoConfig(n_lesion_cases=4, n_healthy=2, n_test=1, shape=(36, 44, 36), spacing=(3.0, 3.0, 3.0),
                  lesion_radius_mm=(3.0, 8.0), seed=7)


@pytest.fixture(scope="session")
def _tiny_dataset_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template_raw")
    write_demo_dataset(root, TINY)
    return root


@pytest.fixture
def lesiongen_folders(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fresh raw/preprocessed/results folders in the environment variables lesiongen reads."""
    folders = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(f"lesiongen_{name}", str(folder))
    return folders


@pytest.fixture
def tiny_dataset(_tiny_dataset_template, lesiongen_folders) -> Path:
    """A writable copy of the tiny demo dataset inside this test's raw folder."""
    name = f"Dataset{TINY.dataset_id:03d}_{TINY.dataset_name}"
    target = lesiongen_folders["raw"] / name
    shutil.copytree(_tiny_dataset_template / name, target)
    return target


def table_row(header: str, row: str) -> dict[str, str]:
    """A markdown table row as {column heading: cell}, both stripped."""
    return dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))


def folder_digest(folder: Path) -> str:
    """Content hash of every file below ``folder`` (to prove nothing was written or changed)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


TINY_NAME = f"Dataset{TINY.dataset_id:03d}_{TINY.dataset_name}"


def trained_model(name: str, fold: int | str = 0):
    """A model the tests trained on the tiny dataset, loaded from its model folder."""
    from lesiongen.models.registry import load_trained_model

    return load_trained_model(TINY_NAME, name, "lesiongenPlans", fold, "cpu")


def count_inpaint_calls(monkeypatch) -> list[int]:
    """Patches per call of any inpainter's ``inpaint`` from now on (also inside lesiongen_predict's ``main``)."""
    from lesiongen.models.inpainter import Inpainter

    calls: list[int] = []
    original = Inpainter.inpaint

    def counting(self, images, *args, **kwargs):
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Inpainter, "inpaint", counting)
    return calls


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (they are scripts, not a package). Registered under its name
    before it runs, because a dataclass looks its module up in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def write_plans_variant(dataset_folder: Path, name: str, edit: Callable[[dict], None] = lambda plans: None) -> str:
    """Plans ``name`` next to the default plans of a preprocessed dataset folder: a copy changed by ``edit`` that
    shares their preprocessed data, as a user derives plans by hand; returns ``name`` (for ``-p``)."""
    plans = json.loads((dataset_folder / "lesiongenPlans.json").read_text())
    edit(plans)
    plans.update(plans_name=name, data_identifier="lesiongenPlans")
    (dataset_folder / f"{name}.json").write_text(json.dumps(plans))
    return name


def shrink_networks(plans_file: Path) -> None:
    """CPU-test-sized diffusion and UNet networks; users may edit the plans the same way."""
    plans = json.loads(plans_file.read_text())
    for stage in ("mask_generation", "inpainting"):
        networks = plans["stages"][stage]["networks"]
        networks["diffusion"]["kwargs"].update(channels=[8, 16, 16], num_head_channels=8, norm_num_groups=8,
                                               num_res_blocks=1)
        plans["stages"][stage]["batch_size"] = 4
    mask_networks = plans["stages"]["mask_generation"]["networks"]
    for name in ("unet", "gan_generator"):
        mask_networks[name]["kwargs"].update(features_per_stage=[4, 8, 16])
    mask_networks["gan_discriminator"]["kwargs"].update(channels=4)
    plans["stages"]["segmentation"]["networks"]["unet"]["kwargs"].update(features_per_stage=[4, 8, 16, 32])
    plans_file.write_text(json.dumps(plans))


@pytest.fixture(scope="session")
def _tiny_preprocessed_template(tmp_path_factory, _tiny_dataset_template) -> dict[str, Path]:
    """The tiny dataset planned and preprocessed (small networks) once per session, in this process (``-np 1``: a
    spawned worker pool would cost seconds of imports per stage, more than the tiny cases themselves); modules and
    tests get copies."""
    from lesiongen.cli import plan_and_preprocess

    root = tmp_path_factory.mktemp("pipeline_template")
    folders = {name: root / name for name in ("raw", "preprocessed", "results")}
    shutil.copytree(_tiny_dataset_template, folders["raw"])
    folders["preprocessed"].mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name, folder in folders.items():
            patch.setenv(f"lesiongen_{name}", str(folder))
        assert plan_and_preprocess.main_plan_and_preprocess(["-d", str(TINY.dataset_id), "-np", "1"]) == 0
    shrink_networks(folders["preprocessed"] / TINY_NAME / "lesiongenPlans.json")
    return folders


@pytest.fixture(scope="session")
def tiny_plans(_tiny_preprocessed_template):
    """The tiny dataset's plans, read only (tests that change plans write their own copy)."""
    from lesiongen.planning.plans import load_plans

    return load_plans(_tiny_preprocessed_template["preprocessed"] / TINY_NAME / "lesiongenPlans.json")


@pytest.fixture(scope="module")
def tiny_preprocessed(tmp_path_factory, _tiny_preprocessed_template):
    """A module's own copy of the planned and preprocessed tiny dataset, an empty results folder, env set."""
    root = tmp_path_factory.mktemp("pipeline")
    folders = {name: root / name for name in ("raw", "preprocessed", "results")}
    for name in ("raw", "preprocessed"):  # copy2 keeps mtimes, so the preprocessed cases stay up to date
        shutil.copytree(_tiny_preprocessed_template[name], folders[name])
    folders["results"].mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name, folder in folders.items():
            patch.setenv(f"lesiongen_{name}", str(folder))
        yield folders
