"""Training throughput, peak memory and sampling cost of the mask generators on the current device.

    python benchmarks/train_throughput.py [-d 501] [--realistic] [--steps 20] [--batch_size B] [-device cuda]

Without ``-d`` it writes the demo dataset (``--realistic``: 180x210x170 at 1 mm) into a temporary folder and
plans and preprocesses it. Each trainer is measured in its own process (so peak memory is its own) at the planned
lesion patch and batch size (or ``--batch_size``): training samples/s after warm-up, peak resident memory (CPU) or
peak allocated memory (CUDA), then seconds and network evaluations per sampled mask. Sampling is also shown as a
ratio to the spheremask baseline. This is a benchmark, not a test; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINERS = ("spheremask", "unetmask", "diffmask", "ganmask")


def measure(trainer_name: str, dataset_id: str, steps: int, batch_size: int | None, device: str, n_masks: int) -> dict:
    import numpy as np
    import torch

    from lesiongen.models.conditioning import MaskConditioning
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.training.base import TrainingOptions
    from lesiongen.preprocessing.lesion_patches import fill_lesions
    from lesiongen.training.registry import trainer_class

    dataset = open_preprocessed(dataset_id)
    options = TrainingOptions(total_steps=steps + 2, batch_size=batch_size)
    trainer = trainer_class(trainer_name)(dataset, "all", torch.device(device), options)
    trainer.initialize()
    trainer.load_training_data()
    result = {"trainer": trainer_name, "batch_size": trainer.batch_size, "patch_size": trainer.patch_size,
              "parameters_m": sum(p.numel() for n in trainer.networks.values() for p in n.parameters()) / 1e6}
    if trainer.networks:
        for _ in range(2):  # warm-up: allocator, cuDNN autotuning, lazy imports
            trainer._train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer._train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result["train_samples_per_s"] = steps * trainer.batch_size / seconds
        result["seconds_per_step"] = seconds / steps
    model = trainer.ema_model()
    for net in model.networks.values():
        net.eval()
    data = trainer.data if hasattr(trainer, "data") else None
    conditioning = MaskConditioning()
    if data is not None:
        index = np.arange(n_masks) % len(data)
        tissue = None if data.tissue is None else data.tissue[index]
        images = np.stack([fill_lesions(data.images[i], data.masks[i], data.brain[i],
                                        None if tissue is None else data.tissue[i]) for i in index])
        conditioning = MaskConditioning(brain=data.brain[index], tissue=tissue, images=images)
    start = time.perf_counter()
    model.sample_masks(n_masks, conditioning, seed=0)
    result["sample_seconds_per_mask"] = (time.perf_counter() - start) / n_masks
    result["network_evaluations_per_mask"] = model.last_evaluations
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def prepare_dataset(root: Path, realistic: bool) -> str:
    env = dict(os.environ, lesiongen_raw=str(root / "raw"), lesiongen_preprocessed=str(root / "preprocessed"),
               lesiongen_results=str(root / "results"))
    os.environ.update(env)
    make = ["lesiongen_make_demo_dataset"] + (["--realistic"] if realistic else [])
    subprocess.run(make, check=True, env=env)
    subprocess.run(["lesiongen_plan_and_preprocess", "-d", "501", "-np", "2"], check=True, env=env)
    return "501"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", default=None, help="an already preprocessed dataset")
    parser.add_argument("--realistic", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--n_masks", type=int, default=8)
    parser.add_argument("-device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.dataset, args.steps, args.batch_size, args.device, args.n_masks)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or prepare_dataset(Path(tmp), args.realistic)
        rows = []
        for name in args.trainers:
            command = [sys.executable, __file__, "-d", dataset, "--worker", name, "--steps", str(args.steps),
                       "--n_masks", str(args.n_masks), "-device", args.device]
            if args.batch_size:
                command += ["--batch_size", str(args.batch_size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    baseline = next((r["sample_seconds_per_mask"] for r in rows if r["trainer"] == "spheremask"), None)
    print(f"device: {args.device}; patch {rows[0]['patch_size']}; {args.steps} timed steps after 2 warm-up steps")
    print(f"{'trainer':<11} {'params M':>8} {'batch':>5} {'train samples/s':>15} {'peak MiB':>9} "
          f"{'s / mask':>9} {'evals / mask':>12} {'x spheremask':>12}")
    for r in rows:
        peak = r.get("peak_cuda_mib", r["peak_rss_mib"])
        speed = f"{r['train_samples_per_s']:.1f}" if "train_samples_per_s" in r else "-"
        ratio = f"{r['sample_seconds_per_mask'] / baseline:.0f}" if baseline else "-"
        print(f"{r['trainer']:<11} {r['parameters_m']:>8.2f} {r['batch_size']:>5} {speed:>15} {peak:>9.0f} "
              f"{r['sample_seconds_per_mask']:>9.4f} {r['network_evaluations_per_mask']:>12} {ratio:>12}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import write_results

    write_results("train_throughput" + ("_realistic" if args.realistic else ""),
                  {"settings": {k: str(v) for k, v in vars(args).items()}, "trainers": rows}, args.json)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
