"""Does synthetic data help? ``seg`` with and without synthetic lesions in the low-data regime, on held-out tests.

    python benchmarks/augmentation_benefit.py [--strategies none sphere diffmask] [--seg_steps 400]
        [--generator_steps 300] [--inpaint_steps 300] [--batch_size N] [-device cpu] [--parallel]
        [--planned_networks] [--n_test 12] [--image_reader SimpleITKIO] [--keep DIR] [--json FILE]

It writes a demo dataset with 8 real lesion cases, 8 healthy scans and ``--n_test`` held-out test cases, plans and
preprocesses it, reduces the planned networks to CPU size (as ``lesiongen_demo`` does; ``--planned_networks``
keeps them), trains the mask generators and the inpainter on fold ``all`` (the 8 lesion cases; the test cases are
never seen), then a ``seg`` model per strategy with the same steps and seed, segments the test scans at their own
geometry and prints test Dice and lesion F1 per strategy with the paired difference to ``none`` (mean and standard
error over the test cases). The goal: real + synthetic >= +3 Dice points over real only, and diffmask >= sphere. It
reports whatever it measures; it asserts nothing.

``--parallel`` runs the trainings that do not depend on each other at the same time (the generators, the inpainter
and ``seg none`` first, then the other ``seg`` runs), each with an equal share of the CPU threads: the way to use
one GPU with these small networks. Each training's log is kept under ``WORK/logs``.

Every run starts from scratch: ``--keep DIR`` must name a new or empty folder (an earlier run's models are never
reused). The JSON records the code version, settings, seeds and the sha256 of every model that produced the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def run(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


def wait_all(jobs: dict[str, tuple[subprocess.Popen, Path, float]]) -> dict[str, float]:
    """Wait for every job; on a failure print its log's tail and stop. Returns each job's minutes."""
    minutes = {}
    for name, (process, log, start) in jobs.items():
        if process.wait() != 0:
            tail = log.read_text().splitlines()[-25:]
            sys.exit(f"{name} failed (exit {process.returncode}); last lines of {log}:\n" + "\n".join(tail))
        minutes[name] = (time.perf_counter() - start) / 60
        print(f"  {name}: {minutes[name]:.1f} min", flush=True)
    return minutes


def run_phase(commands: dict[str, list[str]], env: dict, logs: Path, parallel: bool) -> dict[str, float]:
    if not commands:
        return {}
    if not parallel:
        minutes = {}
        for name, command in commands.items():
            minutes.update(wait_all({name: (run(command, env, logs / f"{name}.log"), logs / f"{name}.log",
                                            time.perf_counter())}))
        return minutes
    threads = max(1, (os.cpu_count() or 1) // len(commands))
    env = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    jobs = {name: (run(command, env, logs / f"{name}.log"), logs / f"{name}.log", time.perf_counter())
            for name, command in commands.items()}
    return wait_all(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["none", "sphere", "diffmask"])
    parser.add_argument("--seg_steps", type=int, default=400)
    parser.add_argument("--generator_steps", type=int, default=300)
    parser.add_argument("--inpaint_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="for the generators and the inpainter (default: the planned batch size)")
    parser.add_argument("--synthetic_ratio", type=float, default=1.0)
    parser.add_argument("--n_test", type=int, default=12, help="held-out test cases")
    parser.add_argument("-np", "--num_processes", type=int, default=2, help="for planning and preprocessing")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--parallel", action="store_true", help="run independent trainings at the same time")
    parser.add_argument("--seg_workers", type=int, default=None, help="augmentation processes per seg run")
    parser.add_argument("--planned_networks", action="store_true", help="keep the planned (full-size) networks")
    parser.add_argument("--image_reader", default="SimpleITKIO", choices=["SimpleITKIO", "NibabelIO"])
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"{args.keep}: not empty; a benchmark starts from scratch (give a new or empty --keep folder)")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        results, minutes, models = experiment(args, root)
        minutes["wall"] = (time.perf_counter() - start) / 60
    report(args, results, minutes, models)


def experiment(args: argparse.Namespace, root: Path) -> tuple[dict, dict[str, float], dict[str, dict]]:
    env = dict(os.environ, lesiongen_raw=str(root / "raw"), lesiongen_preprocessed=str(root / "preprocessed"),
               lesiongen_results=str(root / "results"))
    os.environ.update(env)
    logs = root / "logs"
    start = time.perf_counter()
    dataset = ["lesiongen_make_demo_dataset", "--n_lesion_cases", "8", "--n_healthy", "8", "--n_test",
               str(args.n_test), "--seed", "3", "--image_reader", args.image_reader]
    run_phase({"dataset": dataset}, env, logs, parallel=False)
    plan = ["lesiongen_plan_and_preprocess", "-d", "501", "-np", str(args.num_processes), "--preset", "cpu"]
    run_phase({"plan_and_preprocess": plan}, env, logs, parallel=False)
    plans = "lesiongenPlans" if args.planned_networks else "lesiongenPlansCPU"
    minutes = {"setup": (time.perf_counter() - start) / 60}

    def train(trainer: str, steps: int, *extra: str) -> list[str]:
        return ["lesiongen_train", "501", trainer, "all", "-device", args.device, "--steps", str(steps), "-p", plans,
                *extra]

    from lesiongen.inference.strategies import STRATEGIES

    generators = sorted({STRATEGIES[s].mask_generator for s in args.strategies if STRATEGIES[s].mask_generator})
    seg_extra = ["--synthetic_ratio", str(args.synthetic_ratio)]
    if args.seg_workers is not None:
        seg_extra += ["--set", f"num_workers={args.seg_workers}"]
    batch = ["--batch_size", str(args.batch_size)] if args.batch_size else []
    first = {name: train(name, args.generator_steps, *batch) for name in generators}
    if generators:
        first["inpaint"] = train("inpaint", args.inpaint_steps, *batch)
    seg = {f"seg_{s}": train("seg", args.seg_steps, "--synthetic", s, *seg_extra) for s in args.strategies}
    if "none" in args.strategies:  # needs no generator: runs beside them
        first["seg_none"] = seg.pop("seg_none")
    minutes.update(run_phase(first, env, logs, args.parallel))
    minutes.update(run_phase(seg, env, logs, args.parallel))
    start = time.perf_counter()
    results = test_scores(args.strategies, args.device, plans)
    minutes["test"] = (time.perf_counter() - start) / 60
    return results, minutes, models_used(root / "results")


def models_used(results_root: Path) -> dict[str, dict]:
    """Every final checkpoint of the run with its sha256, steps and seed: what produced the figures."""
    from lesiongen.models.checkpoint import load_checkpoint
    from lesiongen.utilities.provenance import model_record

    return {f"{path.parent.parent.name}/{path.parent.name}": model_record(path, load_checkpoint(path).get("provenance"))
            for path in sorted(results_root.glob("*/*/fold_*/checkpoint_final.pt"))}


def test_scores(strategies: list[str], device: str, plans_name: str) -> dict[str, dict]:
    """Per strategy, per test case metrics of its ``seg`` model (fold all) at the scans' own geometry; each test
    scan is read once and segmented by every model."""
    import numpy as np

    from lesiongen.evaluation.segmentation_metrics import case_metrics
    from lesiongen.inference.segment import segment
    from lesiongen.io.dataset import load_dataset
    from lesiongen.io.images import read_channels, read_image
    from lesiongen.models.registry import load_trained_model
    from lesiongen.preprocessing.dataset import open_preprocessed

    dataset = open_preprocessed(501, plans_name)
    models = {s: load_trained_model(dataset.name, f"seg_{s}", dataset.plans.plans_name, "all", device)
              for s in strategies}
    raw = load_dataset(501)
    label = int(dataset.plans.lesion_labels[0])  # the demo has one lesion class
    results: dict[str, dict] = {s: {} for s in strategies}
    for case in raw.split("test"):
        images, geometry = read_channels(case.images, raw.info.reader)
        reference = read_image(case.label, raw.info.reader)[0].astype(np.uint8)
        for strategy, model in models.items():
            prediction, _, _ = segment(images, list(geometry.spacing_zyx), [model])
            metrics = case_metrics(reference, prediction, geometry.spacing_zyx, dataset.plans.lesion_labels)
            results[strategy][case.case_id] = {k: float(metrics[label][k]) for k in METRICS}
    return results


METRICS = ("dice", "lesion_f1", "lesion_recall", "lesion_precision")


def report(args: argparse.Namespace, results: dict, minutes: dict[str, float], models: dict[str, dict]) -> None:
    from lesiongen.utilities.provenance import code_version

    import numpy as np

    def mean(strategy: str, metric: str) -> float:
        return float(np.mean([case[metric] for case in results[strategy].values()]))

    def paired(strategy: str, metric: str) -> tuple[float, float]:
        diff = [results[strategy][c][metric] - results["none"][c][metric] for c in results["none"]]
        return float(np.mean(diff)), float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0

    networks = "planned" if args.planned_networks else "CPU-sized"
    print(f"\n8 real lesion cases, {args.n_test} held-out test cases, {networks} networks on {args.device}; seg "
          f"{args.seg_steps} steps, generators {args.generator_steps}, inpainter {args.inpaint_steps} steps, "
          f"synthetic ratio {args.synthetic_ratio} ({minutes['wall']:.1f} min wall time)")
    print(f"{'strategy':<11} {'test Dice':>9} {'lesion F1':>9} {'recall':>7} {'precision':>9} "
          f"{'Dice vs none (± s.e.)':>22} {'F1 vs none':>16}")
    for strategy in results:
        cells = [f"{mean(strategy, m):>{w}.3f}" for m, w in zip(METRICS, (9, 9, 7, 9))]
        if strategy != "none" and "none" in results:
            d, se = paired(strategy, "dice")
            f, fse = paired(strategy, "lesion_f1")
            cells += [f"{100 * d:+.1f} ± {100 * se:.1f} pts".rjust(22), f"{f:+.3f} ± {fse:.3f}".rjust(16)]
        else:
            cells += ["-".rjust(22), "-".rjust(16)]
        print(f"{strategy:<11} " + " ".join(cells))
    summary = {"provenance": {**code_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": models,
                              "from_scratch": True},
               "settings": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes, "per_case": results,
               "mean": {s: {m: mean(s, m) for m in METRICS} for s in results}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["mean"]))


if __name__ == "__main__":
    main()
