"""Does synthetic data help? ``lesiongen_benefit`` on a generated dataset, from scratch, with provenance.

    python benchmarks/augmentation_benefit.py [--realistic] [--n_lesion_cases 8] [--n_healthy 8] [--n_test 12]
        [--plans lesiongenPlansCPU] [--work DIR] [--json FILE] -- [lesiongen_benefit options]

What this adds to the command: a new work folder every time (an earlier run's models are never reused), the demo
dataset written there (``--realistic``: 180x210x170 voxels at 1 mm), planned and preprocessed with the CPU preset,
and the command's JSON copied to ``benchmarks/results/`` with the wall time and the provenance of the run. Options
after ``--`` go to ``lesiongen_benefit`` unchanged, e.g. ``-- --seeds 0 1 2 --seg_steps 400 --generator_steps 400
--inpaint_steps 400``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    add_benefit_demo_arguments, benefit_demo_arguments, console_script, fresh_work_folder, run_step, work_env,
    write_and_plan_demo, write_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benefit_demo_arguments(parser)
    parser.add_argument("--plans", default="lesiongenPlansCPU", help="lesiongenPlans for the planned networks")
    parser.add_argument("-np", "--num_processes", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder, new or empty (default: temporary)")
    parser.add_argument("--json", type=Path, default=None)
    args, benefit_args = parser.parse_known_args()
    benefit_args = [a for a in benefit_args if a != "--"]
    with fresh_work_folder(args.work, "lesiongen_benefit_") as work:
        env = work_env(work)
        minutes: dict[str, float] = {}
        start = time.perf_counter()
        write_and_plan_demo(env, minutes, "501", benefit_demo_arguments(
            args.realistic, args.n_lesion_cases, args.n_healthy, args.n_test), args.num_processes)
        run_step("benefit", [console_script("lesiongen_benefit"), "-d", "501", "-p", args.plans, "-o",
                             str(work / "benefit"), *benefit_args], env, minutes, stream=True)
        report = json.loads((work / "benefit" / "benefit.json").read_text())
        minutes["wall"] = round((time.perf_counter() - start) / 60, 2)
    name = "augmentation_benefit" + ("_realistic" if args.realistic else "")
    write_results(name, {"settings": {**{k: str(v) for k, v in vars(args).items()}, "benefit_args": benefit_args},
                         "minutes": minutes, "benefit": report}, args.json)
    print(f"wall time {minutes['wall']:.1f} min")


if __name__ == "__main__":
    main()
