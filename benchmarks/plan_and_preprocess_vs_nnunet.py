"""lesiongen_plan_and_preprocess vs nnUNetv2_plan_and_preprocess -c 3d_fullres on the same data.

Builds a realistic demo dataset (default 12 lesion cases, 180x210x170 voxels, 2 channels, 1 mm), runs both tools
with the same process count on fresh output folders, and prints wall time, peak memory (summed RSS of the
process tree) and their ratios, and whether the target spacings agree.

nnU-Net v2 is a peer, not a dependency: install it anywhere (``pip install nnunetv2``, ideally in its own
virtual environment) and point ``--nnunet_bin`` at the folder holding ``nnUNetv2_plan_and_preprocess``.

    python benchmarks/plan_and_preprocess_vs_nnunet.py --nnunet_bin /path/to/venv/bin -np 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import require_new_folder, run_measured, write_results  # noqa: E402

from lesiongen.demo.phantom import REALISTIC, DemoConfig, write_demo_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--n_cases", type=int, default=12)
    parser.add_argument("--n_healthy", type=int, default=0,
                        help="healthy scans too (lesiongen preprocesses them, nnU-Net ignores them)")
    parser.add_argument("-np", "--num_processes", type=int, default=2)
    parser.add_argument("--nnunet_bin", type=Path, default=None,
                        help="folder with nnUNetv2_plan_and_preprocess (default: found on PATH)")
    parser.add_argument("--skip_nnunet", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    args = parser.parse_args()

    require_new_folder(args.work)
    work = args.work or Path(tempfile.mkdtemp(prefix="lesiongen_bench_"))
    raw = work / "raw"
    config = DemoConfig(n_lesion_cases=args.n_cases, n_healthy=args.n_healthy, n_test=0, **REALISTIC)
    dataset = raw / f"Dataset{config.dataset_id:03d}_{config.dataset_name}"
    print(f"writing {args.n_cases} cases of {config.shape} voxels to {dataset} ...", flush=True)
    write_demo_dataset(raw, config)

    n = str(args.num_processes)
    results = {}
    lesiongen_out = work / "lesiongen_preprocessed"
    shutil.rmtree(lesiongen_out, ignore_errors=True)
    lesiongen_bin = Path(sys.executable).parent / "lesiongen_plan_and_preprocess"
    results["lesiongen"] = run_measured(
        [str(lesiongen_bin), "-d", str(config.dataset_id), "-np", n],
        env={"lesiongen_raw": str(raw), "lesiongen_preprocessed": str(lesiongen_out),
             "lesiongen_results": str(work / "lesiongen_results")},
    )
    if not args.skip_nnunet:
        nnunet_cmd = "nnUNetv2_plan_and_preprocess"
        nnunet_bin = str(args.nnunet_bin / nnunet_cmd) if args.nnunet_bin else shutil.which(nnunet_cmd)
        if nnunet_bin is None:
            parser.error(f"{nnunet_cmd} not found; pip install nnunetv2 and pass --nnunet_bin")
        nnunet_out = work / "nnunet_preprocessed"
        shutil.rmtree(nnunet_out, ignore_errors=True)
        results["nnunet"] = run_measured(
            [nnunet_bin, "-d", str(config.dataset_id), "-c", "3d_fullres", "-np", n, "-npfp", n],
            env={"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(nnunet_out),
                 "nnUNet_results": str(work / "nnunet_results")},
        )

    for name, m in results.items():
        if m.returncode != 0:
            print(f"{name} failed (exit {m.returncode}):\n{m.output_tail}")
            sys.exit(1)
        print(f"{name:10s} wall {m.wall_seconds:7.1f} s   peak memory {m.peak_rss_mib:8.0f} MiB")
    if "nnunet" in results:
        ours, theirs = results["lesiongen"], results["nnunet"]
        print(f"ratio lesiongen / nnU-Net: wall time {ours.wall_seconds / theirs.wall_seconds:.2f}x, "
              f"peak memory {ours.peak_rss_mib / theirs.peak_rss_mib:.2f}x  (target <= 0.5x for both)")
        ours_plans = json.loads((lesiongen_out / dataset.name / "lesiongenPlans.json").read_text())
        theirs_plans = json.loads((nnunet_out / dataset.name / "nnUNetPlans.json").read_text())
        a = ours_plans["target_spacing"]
        b = theirs_plans["configurations"]["3d_fullres"]["spacing"]
        agree = all(abs(x - y) <= 1e-4 * max(abs(y), 1) for x, y in zip(a, b))
        print(f"target spacing: lesiongen {a}, nnU-Net {b} -> {'agree' if agree else 'DIFFER'}")
    payload = {"settings": {k: str(v) for k, v in vars(args).items()},
               "data": {"cases": args.n_cases, "shape": list(config.shape), "spacing": list(config.spacing)},
               "tools": {name: {"wall_seconds": m.wall_seconds, "peak_rss_mib": m.peak_rss_mib}
                         for name, m in results.items()}}
    if "nnunet" in results:
        payload["ratio"] = {"wall_time": ours.wall_seconds / theirs.wall_seconds,
                            "peak_memory": ours.peak_rss_mib / theirs.peak_rss_mib}
        payload["target_spacing"] = {"lesiongen": a, "nnunet": b, "agree": agree}
    write_results("plan_and_preprocess_vs_nnunet", payload, args.json)
    if "nnunet" in results and not agree:
        sys.exit(1)
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
