"""Inpainting cost per lesion patch and per whole scan, fast vs full schedule, on the current device.

    python benchmarks/synthesis_speed.py [-d 501] [--train_steps 20] [--lesions 6] [-device cpu]

Without ``-d`` it writes the default demo dataset into a temporary folder, plans and preprocesses it and trains the
demo-size ``inpaint`` model and ``spheremask`` briefly (speed does not depend on how well a model is trained).
It then prints network evaluations and wall time per lesion patch for the fast (DDIM + jumps + CFG) and full
(DDPM + jumps + CFG) schedules, and the wall time to put ``--lesions`` lesions into one 1 mm brain scan of
180x210x170 voxels (a fresh phantom) with the fast schedule, with the scan's lesions batched through the network
and one at a time; the target is <= 60 s on CPU.

Then scans per minute of ``lesiongen_predict -m synth`` (``--lesions`` spheremask lesions, fast schedule) on
``--scans`` fresh 1 mm healthy phantoms, start-up and model loading included, with one process (all ``--threads``)
and with two processes at once (``--num_parts 2 --part_id 0/1``, half the threads each): lesiongen_predict has no
pool of its own; parts are how it spreads cases over processes. Last, one process with every scan in one group
(``--batch_scans`` = ``--scans``: the scans' lesions share the inpainter's batches). It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path


def prepare(root: Path, train_steps: int, device: str) -> str:
    env = dict(os.environ, lesiongen_raw=str(root / "raw"), lesiongen_preprocessed=str(root / "preprocessed"),
               lesiongen_results=str(root / "results"))
    os.environ.update(env)
    subprocess.run(["lesiongen_make_demo_dataset"], check=True, env=env)
    subprocess.run(["lesiongen_plan_and_preprocess", "-d", "501", "-np", "2"], check=True, env=env)
    subprocess.run(["lesiongen_train", "501", "spheremask", "0", "-device", device], check=True, env=env)
    subprocess.run(["lesiongen_train", "501", "inpaint", "0", "-device", device, "--steps", str(train_steps),
                    "--batch_size", "4"], check=True, env=env)
    return "501"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", default=None, help="a dataset with trained inpaint + spheremask fold 0")
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--lesions", type=int, default=6)
    parser.add_argument("--patches", type=int, default=4, help="patches timed with the fast schedule")
    parser.add_argument("--full_patches", type=int, default=1, help="patches timed with the full schedule")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--scans", type=int, default=4, help="1 mm healthy scans for the scans-per-minute figure "
                                                             "(0: skip it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for lesiongen_predict: all for one process, half each for two")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset_id = args.dataset or prepare(Path(tmp), args.train_steps, args.device)
        run(dataset_id, args, Path(tmp))


def predict_scans_per_minute(dataset_id: str, args: argparse.Namespace, work: Path) -> list[dict]:
    """Wall time of ``lesiongen_predict -m synth`` on fresh 1 mm healthy phantoms: one process, two parts, and one
    process editing all scans at once."""
    from lesiongen.demo.phantom import REALISTIC, DemoConfig, write_demo_dataset

    config = DemoConfig(dataset_id=902, dataset_name="SynthSpeed", n_lesion_cases=1, n_healthy=args.scans,
                        n_test=0, seed=3, **REALISTIC)
    scans = write_demo_dataset(work / "speed_raw", config)
    command = ["lesiongen_predict", "-d", dataset_id, "-i", str(scans / "imagesHealthy"), "-m", "synth", "-f", "0",
               "--masks", "spheremask", "-device", args.device, "--brain_masks", str(scans / "brainmasksHealthy"),
               "--tissue", str(scans / "tissueHealthy"), "--n_lesions", str(args.lesions)]
    rows = []
    for processes, batch_scans in ((1, 1), (2, 1), (1, args.scans)):
        threads = str(max(1, args.threads // processes))
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = work / f"speed_out_{processes}_{batch_scans}"
        parts = [["--batch_scans", str(batch_scans),
                  *(["--num_parts", str(processes), "--part_id", str(k)] if processes > 1 else [])]
                 for k in range(processes)]
        start = time.perf_counter()
        running = [subprocess.Popen([*command, "-o", str(out), *part], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for part in parts]
        errors = [p.communicate()[1] for p in running]
        seconds = time.perf_counter() - start
        failed = [e[-2000:] for p, e in zip(running, errors) if p.returncode != 0]
        if failed:
            raise SystemExit(f"lesiongen_predict failed:\n{failed[0]}")
        written = len(list((out / "labels").glob("*")))
        rows.append({"processes": processes, "threads_per_process": int(threads), "batch_scans": batch_scans,
                     "scans": written, "seconds": seconds, "scans_per_minute": written / seconds * 60})
    return rows


def run(dataset_id: str, args: argparse.Namespace, work: Path) -> None:
    import numpy as np

    from lesiongen.demo.phantom import make_phantom
    from lesiongen.diffusion.inpainting import InpaintSchedule
    from lesiongen.inference.synthesis import synthesize
    from lesiongen.preprocessing.dataset import open_preprocessed
    from lesiongen.models.registry import load_trained_model
    from lesiongen.preprocessing.lesion_patches import load_lesion_patches

    dataset = open_preprocessed(dataset_id)
    inpainter = load_trained_model(dataset.name, "inpaint", dataset.plans.plans_name, 0, args.device)
    generator = load_trained_model(dataset.name, "spheremask", dataset.plans.plans_name, 0, args.device)
    for model in (inpainter, generator):  # which models the figures come from
        record = model.record()
        print(f"{model.kind}: {record['checkpoint']} sha256 {record['sha256'][:12]}, "
              f"{record.get('steps_trained')} steps")
    patches = load_lesion_patches(dataset.lesion_patch_folder, inpainter.provenance["val_cases"])
    rows = []
    for name, schedule, n in (("fast", InpaintSchedule.fast(), args.patches),
                              ("full", InpaintSchedule.full(), args.full_patches)):
        if n <= 0:
            continue
        n = min(n, len(patches))
        start = time.perf_counter()
        for i in range(n):
            inpainter.inpaint(patches.images[i:i + 1], patches.masks[i:i + 1], "insert", seed=i, schedule=schedule,
                              brain=patches.brain[i:i + 1])
        rows.append((name, inpainter.last_evaluations, (time.perf_counter() - start) / n))
    print(f"device {args.device}; lesion patch {dataset.plans.lesion_patch_size} at {dataset.plans.target_spacing} mm; "
          f"inpaint network {sum(p.numel() for p in inpainter.networks['denoiser'].parameters()) / 1e6:.2f} M params")
    print(f"{'schedule':<8} {'evaluations / patch':>20} {'seconds / patch':>16}")
    for name, evaluations, seconds in rows:
        print(f"{name:<8} {evaluations:>20} {seconds:>16.2f}")
    if len(rows) == 2:
        print(f"full / fast: {rows[1][1] / rows[0][1]:.0f}x evaluations, {rows[1][2] / rows[0][2]:.0f}x time")

    subject = make_phantom((180, 210, 170), (1.0, 1.0, 1.0), np.random.default_rng(0), 0)
    images = np.stack([subject.t1, subject.flair]).astype(np.float32)
    whole_scan = {}
    for batched in (True, False):
        start = time.perf_counter()
        result = synthesize(images, [1.0, 1.0, 1.0], dataset.plans, inpainter, generator, n_lesions=args.lesions,
                            seed=0, brain_mask=subject.brain_mask.astype(bool), tissue=subject.tissue,
                            batch_lesions=batched)
        whole_scan["batched" if batched else "one_at_a_time"] = time.perf_counter() - start
    seconds = whole_scan["batched"]
    print(f"whole scan 180x210x170 at 1 mm, {len(result.lesions)} lesions, fast schedule: {seconds:.1f} s with the "
          f"lesions batched, {whole_scan['one_at_a_time']:.1f} s one at a time (target <= 60 s on CPU: "
          f"{seconds / 60:.2f}x of it)")
    placement = time_placement(images, subject, dataset.plans, generator.priors)
    print(f"placement weights of one lesion class in that scan (model space, {placement['brain_voxels']} brain "
          f"voxels): {placement['seconds_with_neighbourhood']:.2f} s with the neighbourhood factor, "
          f"{placement['seconds_without']:.2f} s without")
    prediction = predict_scans_per_minute(dataset_id, args, work) if args.scans > 0 else []
    for row in prediction:
        print(f"lesiongen_predict -m synth, {row['processes']} process(es) x {row['threads_per_process']} thread(s), "
              f"--batch_scans {row['batch_scans']}: {row['scans']} scans in {row['seconds']:.1f} s = "
              f"{row['scans_per_minute']:.2f} scans/min (start-up included)")
    if prediction:
        one, two, together = (row["scans_per_minute"] for row in prediction)
        print(f"2 processes / 1 process: {two / one:.2f}x; all scans at once / one at a time: {together / one:.2f}x")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import write_results

    write_results("synthesis_speed", {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "models": {"inpainter": inpainter.record(), "mask_generator": generator.record()},
        "per_patch": [{"schedule": n, "network_evaluations": e, "seconds": s} for n, e, s in rows],
        "whole_scan": {"shape": [180, 210, 170], "spacing": [1.0, 1.0, 1.0], "lesions": len(result.lesions),
                       "seconds": seconds, "seconds_one_lesion_at_a_time": whole_scan["one_at_a_time"]},
        "placement": placement,
        "predict_synth": prediction}, args.json)


def time_placement(images, subject, plans, priors) -> dict:
    """Seconds to weigh every brain voxel of the scan as a lesion centre (done once per lesion class per scan), with
    and without the neighbourhood factor, in the model space synthesis places lesions in."""
    import dataclasses

    from lesiongen.inference.placement import placement_weights
    from lesiongen.inference.scan_space import to_model_space

    scan = to_model_space(images, [1.0, 1.0, 1.0], plans, subject.brain_mask.astype(bool), subject.tissue)
    prior = priors[min(priors, key=int)]
    out = {"brain_voxels": int(scan.brain.sum()), "has_neighbourhood_bank": prior.neighbourhood is not None}
    for name, used in (("seconds_with_neighbourhood", prior), ("seconds_without",
                                                                dataclasses.replace(prior, neighbourhood=None))):
        start = time.perf_counter()
        placement_weights(scan.brain, scan.tissue, used, plans.target_spacing)
        out[name] = time.perf_counter() - start
    return out


if __name__ == "__main__":
    main()
