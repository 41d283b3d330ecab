"""lesiongen_demo's pipeline up to preprocessing on a tiny phantom (the trainings it then runs are each tested on
their own; the whole demo is the README's main job, run on a fresh clone before a release)."""

from __future__ import annotations

import dataclasses

from conftest import TINY

from lesiongen.demo.phantom import write_demo_dataset
from lesiongen.demo.pipeline import DemoRunOptions, run_demo
from lesiongen.io.images import read_image
from lesiongen.utilities.components import label_components


def test_demo_reports_the_dataset_it_planned_and_a_rerun_preprocesses_nothing(lesiongen_folders):
    config = dataclasses.replace(TINY, n_healthy=1, n_test=0)
    raw = write_demo_dataset(lesiongen_folders["raw"], config)
    options = DemoRunOptions(num_processes=1, mask_steps=0, device="cpu")
    lines = run_demo(config, options)

    lesions = sum(label_components(read_image(label)[0] > 0)[1] for label in (raw / "labelsTr").iterdir())
    cases = config.n_lesion_cases + config.n_healthy
    assert lines[0] == f"lesiongen demo: {raw.name}, plans lesiongenPlansCPU"
    assert lines[1] == f"  cases: {config.n_lesion_cases} lesion cases, {lesions} lesions"
    assert any(line.startswith(f"  preprocessed: {cases} new, 0 up to date, ") for line in lines)
    assert (lesiongen_folders["preprocessed"] / raw.name / "lesiongenPlansCPU.json").is_file()
    assert not any(lesiongen_folders["results"].iterdir())  # mask_steps 0: nothing trained

    again = run_demo(config, options)
    assert f"  preprocessed: 0 new, {cases} up to date, 0 new lesion patches" in again
    assert again[:4] == lines[:4]
