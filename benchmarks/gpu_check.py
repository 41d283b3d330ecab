"""A prepared GPU check: every trainer at its planned size, whole-scan prediction and a CPU reload, in minutes.

    python benchmarks/gpu_check.py                      # cuda when available: the realistic demo, 200 steps each
    python benchmarks/gpu_check.py --tiny -device cpu   # the same stages in CI-size time

Needs nothing beyond ``pip install -e .``. From scratch in a fresh work folder, through the console scripts (one
process per stage, so one crash loses one stage):

1. ``lesiongen_make_demo_dataset --realistic`` (180x210x170 voxels at 1 mm; ``--tiny``: 36x44x36 at 3 mm) and
   ``lesiongen_plan_and_preprocess`` (``--tiny`` adds ``--preset cpu`` and trains with those plans, with two
   sampling steps for diffmask and inpaint, no seg validation pass and two lesions per synthesised scan);
2. ``lesiongen_train 501 TRAINER 0 --steps N`` for spheremask, unetmask, diffmask, inpaint and seg at the planned
   patch and batch size (AMP on CUDA). Samples/s (after two warm-up steps, checkpoint saves excluded) and peak
   memory (``torch.cuda.max_memory_allocated`` on CUDA, peak resident memory on CPU) come from the trainer's own
   ``training_summary.json``; next to them the plans' memory estimate for the trainer's stage;
3. ``cpu_reload``: a checkpoint written on the GPU loads on a machine without one: each model folder is loaded with
   lesiongen's model classes in a process that sees no GPU (``CUDA_VISIBLE_DEVICES=``) and runs one tiny inference;
4. ``lesiongen_predict -m seg`` on the test scans, ``nnUNetv2_predict`` with the same network and weights when it
   is on PATH (the model folder is built by ``predict_vs_nnunet.write_nnunet_model``), and ``lesiongen_predict -m
   synth`` (diffmask masks) on the healthy scans, one scan at a time (``--batch_scans 1``) and all of them together
   (their lesions sharing the inpainter's batches); wall times include each command's start-up. Last, the
   one-at-a-time run again under cProfile: its top functions by own time say where the time goes.

Each stage runs under its own time limit (a share of ``--timeout``, never more than what is left of it); a stage
that fails or runs out of time is reported and the next one runs. The JSON (with provenance) goes to
``benchmarks/results/gpu_check_DEVICE[_tiny]_DATE.json`` or ``--json``; a table goes to stdout. It asserts nothing;
tests/test_gpu_check.py runs ``--tiny -device cpu`` and checks its JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import require_new_folder, run_measured, write_results  # noqa: E402

TRAINERS = ("spheremask", "unetmask", "diffmask", "inpaint", "seg")
DATASET_ID = "501"
DATASET_NAME = "Dataset501_DemoMS"
SEG_VARIANT = "seg_none"  # the seg trainer's model folder without synthetic cases
CPU_PLANS = "lesiongenPlansCPU"
DEFAULT_PLANS = "lesiongenPlans"
# the share of --timeout each stage may take at most (never more than what is left of it); caps, not reservations:
# diffmask (training, threshold fit and few-step choice) and inpaint at 200 steps outran a fifth of 360 s on an H200
STAGE_SHARES = {"dataset": 0.15, "plan_and_preprocess": 0.15, "train": 0.25, "train_seg": 0.3, "cpu_reload": 0.15,
                "predict_seg": 0.15, "nnunet_predict": 0.15, "predict_synth": 0.15}


def _size(args: argparse.Namespace) -> dict[str, Any]:
    """Demo dataset and run sizes: the realistic 1 mm demo on a GPU, a tiny one for CI."""
    if args.tiny:
        return {"demo": ["--n_lesion_cases", "4", "--n_healthy", "2", "--n_test", "1", "--shape", "36", "44", "36",
                         "--spacing", "3", "3", "3"],
                "shape": [36, 44, 36], "spacing": [3.0, 3.0, 3.0], "plans": CPU_PLANS, "preset": ["--preset", "cpu"],
                # two sampling steps (calibration and synthesis), thresholds fitted on 4 patches, no augmentation
                # workers and no validation pass (the predict stage runs the sliding window): each stage only has to run
                "settings": {"diffmask": ["sampling_steps=2", "calibration_patches=4"], "inpaint": ["sampling_steps=2"],
                             "seg": ["num_workers=0", "validate=false"]},
                "tta": ["--disable_tta"], "synth": ["--n_lesions", "2"]}
    return {"demo": ["--realistic", "--n_lesion_cases", "6", "--n_healthy", "2", "--n_test", "1"],
            "shape": [180, 210, 170], "spacing": [1.0, 1.0, 1.0], "plans": DEFAULT_PLANS, "preset": [],
            # validation without mirroring: its 8x cost belongs to the prediction stage, not the training figures
            "settings": {"seg": ["mirror_validation=false"]}, "tta": [], "synth": []}


class Stages:
    """Runs named stages under a shared time budget; records each one's outcome and never lets one end the run."""

    def __init__(self, budget_seconds: float):
        self.deadline = time.monotonic() + budget_seconds
        self.budget = budget_seconds
        self.results: dict[str, dict[str, Any]] = {}

    def limit(self, share_key: str) -> float:
        return max(0.0, min(STAGE_SHARES[share_key] * self.budget, self.deadline - time.monotonic()))

    def run(self, name: str, share_key: str, body: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
        limit = self.limit(share_key)
        print(f"[{name}] limit {limit:.0f} s ...", flush=True)
        if limit < 1:
            result = {"ok": False, "error": "skipped: the --timeout budget is spent", "seconds": 0.0}
        else:
            start = time.perf_counter()
            try:
                result = {"ok": True, **body(limit)}
            except StageFailed as failure:
                result = {"ok": False, "error": str(failure), **failure.details}
            except (Exception, SystemExit) as exc:  # a bug in the check itself must not lose the other figures
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = time.perf_counter() - start
        result["limit_seconds"] = limit
        self.results[name] = result
        status = "ok" if result["ok"] else f"FAILED: {result['error']}"
        print(f"[{name}] {status} ({result['seconds']:.1f} s)", flush=True)
        if not result["ok"] and result.get("output_tail"):
            print("\n".join("    " + line for line in result["output_tail"].splitlines()[-10:]), flush=True)
        return result


class StageFailed(Exception):
    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


def console(name: str) -> str:
    """A console script of the Python running this check (its virtual environment's bin folder)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        found = shutil.which(name)
        if found is None:
            raise StageFailed(f"{name} not found next to {sys.executable} nor on PATH (pip install -e .)")
        return found
    return str(path)


def run_command(command: list[str], env: dict[str, str], limit: float) -> dict[str, Any]:
    """Run a command under ``limit`` seconds: its wall time and peak memory; StageFailed (with the tail of its
    output) unless it exits 0."""
    record, _ = run_command_output(command, env, limit)
    return record


def run_command_output(command: list[str], env: dict[str, str], limit: float) -> tuple[dict[str, Any], str]:
    """:func:`run_command` and the tail of the command's output (stdout and stderr)."""
    measured = run_measured(command, env=env, timeout=limit, tail_lines=40)
    record = {"command": " ".join(command), "wall_seconds": measured.wall_seconds,
              "peak_rss_mib": measured.peak_rss_mib}
    if measured.timed_out:
        raise StageFailed(f"timed out after {limit:.0f} s", **record, output_tail=measured.output_tail)
    if measured.returncode != 0:
        raise StageFailed(f"exit {measured.returncode}", **record, output_tail=measured.output_tail)
    return record, measured.output_tail


# ----------------------------------------------------------------------------------------------------- stages
def train_stage(trainer: str, args: argparse.Namespace, size: dict[str, Any], env: dict[str, str],
                results: Path) -> Callable[[float], dict[str, Any]]:
    def body(limit: float) -> dict[str, Any]:
        command = [console("lesiongen_train"), DATASET_ID, trainer, "0", "-device", args.device,
                   "--steps", str(args.steps), "-p", size["plans"]]
        for setting in size["settings"].get(trainer, []):
            command += ["--set", setting]
        record = run_command(command, env, limit)
        variant = SEG_VARIANT if trainer == "seg" else trainer
        summary = json.loads((results / f"{variant}__{size['plans']}" / "fold_0" / "training_summary.json")
                             .read_text())
        performance = summary.get("performance") or {}
        return {**record, "steps_asked": args.steps, "steps_trained": summary["steps"],
                "batch_size": summary["provenance"].get("batch_size"), "performance": performance,
                "calibration": summary.get("calibration")}

    return body


def reload_stage(args: argparse.Namespace, size: dict[str, Any], env: dict[str, str], results: Path):
    def body(limit: float) -> dict[str, Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "--reload_worker", str(results),
                   "--plans", size["plans"]]
        record, output = run_command_output(command, {**env, "CUDA_VISIBLE_DEVICES": ""}, limit)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        if not lines:
            raise StageFailed("the reload worker printed no result", **record, output_tail=output)
        report = json.loads(lines[-1])
        failed = [k for k, v in report["models"].items() if not v.get("ok")]
        if failed:
            raise StageFailed(f"did not load or run on CPU: {', '.join(failed)}", **record, models=report["models"])
        return {**record, **report}

    return body


def predict_stage(mode: str, args: argparse.Namespace, size: dict[str, Any], env: dict[str, str], raw: Path,
                  out: Path, together: bool = False, profile: bool = False) -> Callable[[float], dict[str, Any]]:
    """``lesiongen_predict -m seg`` on the test scans or ``-m synth`` on the healthy ones (``together``: all of them
    in one group, ``--batch_scans`` = their number; else one at a time). ``profile``: under cProfile, whose top
    functions by own time (where the time goes, waits for the GPU included) join the result."""
    def body(limit: float) -> dict[str, Any]:
        if mode == "seg":
            inputs = raw / "imagesTs"
            extra = ["-m", "seg", *size["tta"]]
        else:
            inputs = raw / "imagesHealthy"
            extra = ["-m", "synth", "--masks", "diffmask", "--brain_masks", str(raw / "brainmasksHealthy"),
                     "--tissue", str(raw / "tissueHealthy"), "--batch_scans",
                     str(count_scans(inputs) if together else 1), *size["synth"]]
        scans = count_scans(inputs)
        command = [console("lesiongen_predict"), "-d", DATASET_ID, "-p", size["plans"], "-i", str(inputs), "-o",
                   str(out), "-f", "0", "-device", args.device, *extra]
        profile_file = out.with_name(out.name + ".prof")
        if profile:
            command = [sys.executable, "-m", "cProfile", "-o", str(profile_file), *command]
        record = run_command(command, env, limit)
        result = {**record, "scans": scans, "seconds_per_scan": record["wall_seconds"] / max(scans, 1)}
        if profile:
            result["profile_top"] = profile_top(profile_file)
        if mode == "synth":
            summary = json.loads((out / "synthesis_summary.json").read_text())
            result.update(lesions=summary["lesions"], sphere_fallbacks=summary["sphere_fallbacks"])
        return result

    return body


def nnunet_stage(args: argparse.Namespace, size: dict[str, Any], env: dict[str, str], raw: Path, work: Path,
                 results: Path) -> Callable[[float], dict[str, Any]]:
    def body(limit: float) -> dict[str, Any]:
        from predict_vs_nnunet import compare_predictions, write_nnunet_model

        executable = shutil.which("nnUNetv2_predict")
        nnunet_env = {**env, "nnUNet_raw": str(raw.parent), "nnUNet_preprocessed": str(work / "nnunet_preprocessed"),
                      "nnUNet_results": str(work / "nnunet_results")}
        write_nnunet_model(work / "nnunet_results", DATASET_NAME, raw, results / f"{SEG_VARIANT}__{size['plans']}")
        out = work / "predict_nnunet"
        command = [executable, "-i", str(raw / "imagesTs"), "-o", str(out), "-d", DATASET_ID, "-c", "3d_fullres",
                   "-f", "0", "-device", args.device, "-npp", "1", "-nps", "1", *size["tta"]]
        record = run_command(command, nnunet_env, limit)
        record["scans"] = count_scans(raw / "imagesTs")
        record["seconds_per_scan"] = record["wall_seconds"] / max(record["scans"], 1)
        labels = json.loads((raw / "dataset.json").read_text())["labels"]
        record["agreement_with_lesiongen"] = compare_predictions(work / "predict_seg", out, ".nii.gz", labels)
        return record

    return body


def profile_top(path: Path, n: int = 15) -> list[dict[str, Any]]:
    """The ``n`` functions of a cProfile file with the most own time, with their cumulative time and calls."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # {(file, line, name): (primitive calls, calls, own, cumulative, callers)}
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:n]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls": calls, "own_seconds": own,
             "cumulative_seconds": cumulative} for (file, line, name), (_, calls, own, cumulative, _) in rows]


def count_scans(folder: Path) -> int:
    return len({p.name.split("_0000")[0] for p in folder.glob("*_0000.*")})


# ----------------------------------------------------------------------------------- the CPU reload worker
def reload_on_cpu(results: Path, plans_name: str) -> dict[str, Any]:
    """Load every trained model folder with lesiongen's model classes on CPU and run one tiny inference each."""
    import torch

    from lesiongen.models.folder import ModelFolder

    report: dict[str, Any] = {"cuda_visible": torch.cuda.is_available(), "models": {}}
    for variant in (*TRAINERS[:-1], SEG_VARIANT):
        entry: dict[str, Any] = {}
        try:
            entry.update(_tiny_inference(ModelFolder(results / f"{variant}__{plans_name}")))
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 - every model gets its own verdict
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        report["models"][variant] = entry
    return report


def _tiny_inference(folder) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import torch

    from lesiongen.diffusion.inpainting import InpaintSchedule
    from lesiongen.models.conditioning import MaskConditioning
    from lesiongen.models.registry import load_model

    model = load_model(folder, 0, "cpu")
    devices = {p.device.type for net in model.networks.values() for p in net.parameters()}
    if devices - {"cpu"}:
        raise RuntimeError(f"parameters on {devices} after loading on cpu")
    plan = model.stage_plan
    patch = model.patch_size
    rng = np.random.default_rng(0)
    brain = np.ones((1, *patch), bool)
    tissue = np.full((1, *patch), 2, np.uint8) if model.plans.has_tissue_maps else None
    images = rng.normal(size=(1, model.plans.num_channels, *patch)).astype(np.float32)
    kind = model.kind
    if kind in ("spheremask", "unetmask"):
        output = model.sample_masks(1, MaskConditioning(brain=brain, tissue=tissue, images=images), seed=0)
    elif kind == "diffmask":  # two solver steps instead of the model's 20: loading and running is the point
        schedule = dataclasses.replace(model.config.schedule, num_inference_steps=2)
        denoised, _ = model.denoise(np.zeros((1, *patch), np.uint8), tissue, seed=0, schedule=schedule)
        output = model.binarise(denoised, model.config.threshold)
    elif kind == "inpaint":
        mask = np.zeros((1, *patch), np.uint8)
        centre = tuple(p // 2 for p in patch)
        mask[(0, *[slice(c - 1, c + 2) for c in centre])] = model.plans.lesion_labels[0]
        output = model.inpaint(images, mask, "insert", seed=0, brain=brain,
                               schedule=InpaintSchedule(num_inference_steps=2, n_jumps=0, guidance_scale=1.0))
    else:
        output = model.predict_probabilities(images[0], mirror=False)
        if not np.allclose(output.sum(axis=0), 1.0, atol=1e-4):
            raise RuntimeError("segmentation probabilities do not sum to 1")
    if not np.all(np.isfinite(output)):
        raise RuntimeError("the inference gave NaN or Inf")
    return {"kind": kind, "stage": model.stage, "checkpoint": str(model.checkpoint),
            "parameters_m": sum(p.numel() for net in model.networks.values() for p in net.parameters()) / 1e6,
            "patch_size": patch, "batch_size": plan.batch_size, "estimated_memory_gb": plan.estimated_memory_gb,
            "output_shape": list(output.shape), "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------- main
def gpu_description(device: str) -> str | None:
    if device != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def run_check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    size = _size(args)
    raw_root, results_root = work / "raw", work / "results"
    raw = raw_root / DATASET_NAME
    results = results_root / DATASET_NAME
    env = {"lesiongen_raw": str(raw_root), "lesiongen_preprocessed": str(work / "preprocessed"),
           "lesiongen_results": str(results_root)}
    stages = Stages(args.timeout)
    processes = ["-np", "1"] if args.tiny else []  # else the command's own default (its usable cores, at most 8)

    stages.run("dataset", "dataset", lambda limit: run_command(
        [console("lesiongen_make_demo_dataset"), "-o", str(raw_root), *size["demo"]], env, limit))
    stages.run("plan_and_preprocess", "plan_and_preprocess", lambda limit: run_command(
        [console("lesiongen_plan_and_preprocess"), "-d", DATASET_ID, *processes, *size["preset"]], env, limit))
    for trainer in TRAINERS:
        stages.run(f"train_{trainer}", "train_seg" if trainer == "seg" else "train",
                   train_stage(trainer, args, size, env, results))
    stages.run("cpu_reload", "cpu_reload", reload_stage(args, size, env, results))
    stages.run("predict_seg", "predict_seg", predict_stage("seg", args, size, env, raw, work / "predict_seg"))
    if shutil.which("nnUNetv2_predict"):
        stages.run("nnunet_predict", "nnunet_predict", nnunet_stage(args, size, env, raw, work, results))
    else:
        stages.results["nnunet_predict"] = {"ok": None, "skipped": "nnUNetv2_predict is not on PATH"}
    stages.run("predict_synth", "predict_synth", predict_stage("synth", args, size, env, raw,
                                                               work / "predict_synth"))
    stages.run("predict_synth_batched", "predict_synth", predict_stage("synth", args, size, env, raw,
                                                                       work / "predict_synth_batched", together=True))
    # last, as it runs slower under the profiler: where a synthesis run's time goes
    stages.run("predict_synth_profiled", "predict_synth", predict_stage("synth", args, size, env, raw,
                                                                        work / "predict_synth_profiled", profile=True))
    return {"settings": {"device": args.device, "tiny": args.tiny, "steps": args.steps, "timeout": args.timeout,
                         "plans": size["plans"], "demo_shape": size["shape"], "demo_spacing": size["spacing"],
                         "gpu": gpu_description(args.device)},
            "stages": stages.results}


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(payload: dict[str, Any]) -> None:
    settings, stages = payload["settings"], payload["stages"]
    print()
    print(f"device {settings['device']}{' (' + settings['gpu'] + ')' if settings['gpu'] else ''}; demo "
          f"{'x'.join(map(str, settings['demo_shape']))} voxels at {settings['demo_spacing'][0]:g} mm; plans "
          f"{settings['plans']}; {settings['steps']} steps per trainer")
    reload_models = stages.get("cpu_reload", {}).get("models", {})
    gpu = settings["device"] == "cuda"
    memory_column = "peak GPU GiB" if gpu else "peak RSS MiB"
    print(f"{'trainer':<11} {'ok':>3} {'steps':>7} {'batch':>5} {'samples/s':>10} {memory_column:>13} "
          f"{'plans est. GB':>13} {'wall s':>7}")
    for trainer in TRAINERS:
        result = stages.get(f"train_{trainer}", {})
        performance = result.get("performance") or {}
        memory = performance.get("peak_gpu_allocated_gib" if gpu else "peak_rss_mib")
        model = reload_models.get(SEG_VARIANT if trainer == "seg" else trainer, {})
        estimate = model.get("estimated_memory_gb")
        estimate_text = "no network" if trainer == "spheremask" else _fmt(estimate)
        if estimate is None and trainer != "spheremask":
            estimate_text = "unknown"  # the reload stage reads it from the model folder's plans
        steps = f"{result.get('steps_trained', '-')}/{result.get('steps_asked', '-')}"
        print(f"{trainer:<11} {'yes' if result.get('ok') else 'NO':>3} {steps:>7} "
              f"{_fmt(result.get('batch_size'), 'd'):>5} {_fmt(performance.get('samples_per_second')):>10} "
              f"{_fmt(memory, '.2f' if gpu else '.0f'):>13} {estimate_text:>13} "
              f"{_fmt(result.get('wall_seconds'), '.1f'):>7}")
    if not gpu:
        print("(on CPU the plans' estimate is about GPU memory and resident memory is not comparable with it)")
    if settings["plans"] == CPU_PLANS:
        print(f"({CPU_PLANS} does not recompute the estimates for its narrower networks: they are the default "
              "plans' widths)")
    for name in ("predict_seg", "nnunet_predict", "predict_synth", "predict_synth_batched"):
        result = stages.get(name, {})
        if result.get("ok") is None:
            print(f"{name:<15} skipped: {result.get('skipped')}")
        elif result.get("ok"):
            extra = f", {result['lesions']} lesions" if "lesions" in result else ""
            print(f"{name:<15} {result['wall_seconds']:7.1f} s for {result.get('scans', '?')} scan(s) "
                  f"({_fmt(result.get('seconds_per_scan'), '.1f')} s/scan, start-up included){extra}")
        else:
            print(f"{name:<15} FAILED: {result.get('error')}")
    profiled = stages.get("predict_synth_profiled", {})
    if profiled.get("ok"):
        print(f"where -m synth spends its {profiled['wall_seconds']:.1f} s (cProfile, own time):")
        for row in profiled["profile_top"][:8]:
            print(f"    {row['own_seconds']:7.2f} s own, {row['cumulative_seconds']:7.2f} s with callees, "
                  f"{row['calls']:6d} calls  {row['function']}")
    reload_result = stages.get("cpu_reload", {})
    loaded = sum(1 for m in reload_models.values() if m.get("ok"))
    print(f"cpu_reload      {'ok' if reload_result.get('ok') else 'FAILED'}: {loaded} of {len(TRAINERS)} model "
          "folders loaded on CPU (no GPU visible) and ran one inference")
    failed = [name for name, r in stages.items() if r.get("ok") is False]
    print(f"stages failed: {', '.join(failed) if failed else 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument("--tiny", action="store_true", help="a tiny demo dataset and CPU-sized plans (CI)")
    parser.add_argument("--steps", type=int, default=None, help="steps per trainer (default 200; --tiny 3)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds for the whole check (default 480; --tiny 600); each stage gets a share")
    parser.add_argument("--work", type=Path, default=None, help="work folder (new or empty; default: a temporary "
                                                                "one, removed at the end)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    parser.add_argument("--reload_worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plans", default=DEFAULT_PLANS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reload_worker is not None:
        print(json.dumps(reload_on_cpu(args.reload_worker, args.plans)))
        return
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.steps = args.steps or (3 if args.tiny else 200)
    args.timeout = args.timeout or (600.0 if args.tiny else 480.0)
    require_new_folder(args.work)
    work = (args.work or Path(tempfile.mkdtemp(prefix="lesiongen_gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        payload = run_check(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(payload)
    write_results(f"gpu_check_{args.device}" + ("_tiny" if args.tiny else ""), payload, args.json)


if __name__ == "__main__":
    main()
