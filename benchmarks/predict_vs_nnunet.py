"""Sliding-window segmentation on CPU: ``lesiongen_predict -m seg`` vs ``nnUNetv2_predict``, same network and weights.

Builds a demo dataset (the small default, or ``--realistic``: 180x210x170 voxels at 1 mm), runs
``lesiongen_plan_and_preprocess`` and trains lesiongen's ``seg`` trainer for one step on fold 0. The network is not
meant to be good: only the prediction machinery is timed. It then writes an nnU-Net v2 trained-model folder
(``nnUNetTrainer__nnUNetPlans__3d_fullres``) that holds THE SAME network (a ``PlainConvUNet`` with lesiongen's
planned arguments), patch size, target spacing and normalisation (z-score within the nonzero mask) and the same
(EMA) weights, and predicts the dataset's test scans (``imagesTs``) with both tools:

* lesiongen: ``lesiongen_predict -d 501 -m seg -f 0`` (crop, normalise and resample as preprocessing does, Gaussian
  sliding window with mirroring, labels back to the scan's geometry);
* nnU-Net: ``nnUNetv2_predict -d 501 -c 3d_fullres -f 0 -npp 1 -nps 1`` (mirroring on by default).

Both run with the same thread count (``--threads``: OMP/MKL_NUM_THREADS for both, and ``nnUNet_def_n_proc``, which
nnU-Net uses for its sliding window and export because ``-device cpu`` otherwise sets torch to all cores). The
script prints wall time and peak memory (summed RSS of each command's process tree, ``measure.py``), the ratios
(target: lesiongen <= 0.8x nnU-Net's time, issue 15) and how well the two predicted label maps agree (Dice per
label, voxel agreement). It asserts nothing.

nnU-Net v2 is a peer, not a dependency: install it in its own virtual environment, e.g.
``python3 -m venv /tmp/nnunet_venv && /tmp/nnunet_venv/bin/pip install nnunetv2 torch==2.13.0`` (a CPU torch), and
point ``--nnunet_bin`` at its ``bin`` folder.

    python benchmarks/predict_vs_nnunet.py --nnunet_bin /tmp/nnunet_venv/bin
    python benchmarks/predict_vs_nnunet.py --nnunet_bin /tmp/nnunet_venv/bin --realistic --n_cases 5 --n_test 2

With ``--work DIR`` an existing dataset, preprocessing and checkpoint in DIR are reused (only predictions rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Measurement, require_new_folder, run_measured, write_results  # noqa: E402

from lesiongen.demo.phantom import REALISTIC, DemoConfig, write_demo_dataset  # noqa: E402

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
_NORM_IMPORTS = {"InstanceNorm3d": "torch.nn.modules.instancenorm.InstanceNorm3d",
                 "BatchNorm3d": "torch.nn.modules.batchnorm.BatchNorm3d"}
_NONLIN_IMPORTS = {"LeakyReLU": "torch.nn.LeakyReLU", "ReLU": "torch.nn.ReLU"}
_NORMALISATIONS = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization",
                   "rescale_0_1": "RescaleTo01Normalization"}


def _run_step(what: str, command: list[str], env: dict[str, str]) -> None:
    print(f"{what} ...", flush=True)
    result = subprocess.run(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if result.returncode != 0:
        print(f"{what} failed (exit {result.returncode}):\n{result.stdout[-5000:]}")
        sys.exit(1)


def nnunet_plans(plans: dict, dataset_name: str) -> dict:
    """An nnU-Net v2 plans dict whose 3d_fullres configuration is lesiongen's segmentation stage."""
    stage = plans["stages"]["segmentation"]
    network = stage["networks"]["unet"]
    if network["architecture"] != "dynamic_network_architectures.architectures.unet.PlainConvUNet":
        raise SystemExit(f"only PlainConvUNet can be mirrored in nnU-Net, got {network['architecture']}")
    kwargs = dict(network["kwargs"])
    for key in ("input_channels", "num_classes", "deep_supervision"):  # nnU-Net passes these itself
        kwargs.pop(key, None)
    arch_kwargs = {
        **kwargs,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "norm_op": _NORM_IMPORTS[kwargs["norm_op"]],
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},  # lesiongen.models.networks._NORMS
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": _NONLIN_IMPORTS[kwargs["nonlin"]],
        "nonlin_kwargs": {"inplace": True},
    }
    channels = sorted(plans["normalization"], key=lambda n: n["channel"])
    spacing = [float(s) for s in plans["target_spacing"]]
    median_shape = [int(s) for s in plans["median_shape_at_target_spacing"]]
    resampling = {"order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in plans["original_median_spacing"]],
        "original_median_shape_after_transp": [int(s) for s in plans["original_median_shape"]],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": int(stage["batch_size"]),
                "patch_size": [int(p) for p in stage["patch_size"]],
                "median_image_size_in_voxels": median_shape,
                "spacing": spacing,
                "normalization_schemes": [_NORMALISATIONS[c["scheme"]] for c in channels],
                "use_mask_for_norm": [bool(c["use_brain_mask"]) for c in channels],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling},
                "architecture": {
                    "network_class_name": network["architecture"],
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            },
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        # only CTNormalization reads these; z-score ignores them
        "foreground_intensity_properties_per_channel": {
            str(c["channel"]): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                                "percentile_99_5": 1.0, "std": 1.0} for c in channels},
    }


def write_nnunet_model(results: Path, dataset_name: str, raw_dataset: Path, lesiongen_model: Path) -> Path:
    """nnUNet_results/DATASET/nnUNetTrainer__nnUNetPlans__3d_fullres with lesiongen's fold-0 EMA weights."""
    import torch

    from lesiongen.models.checkpoint import ema_weights

    plans = json.loads((lesiongen_model / "plans.json").read_text())
    folder = results / dataset_name / TRAINER_FOLDER
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(nnunet_plans(plans, dataset_name), indent=2))
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    dataset_json = {k: dataset_json[k] for k in ("name", "description", "channel_names", "labels", "numTraining",
                                                 "file_ending") if k in dataset_json}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    state = torch.load(lesiongen_model / "fold_0" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    weights = {k: v.detach().clone() for k, v in ema_weights(state["ema"]["unet"]).items()}
    torch.save({"network_weights": weights,
                "init_args": {"plans": None, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                              "device": "cpu"},
                "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2),
                "current_epoch": 1, "optimizer_state": None, "grad_scaler_state": None, "logging": {},
                "_best_ema": None}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def compare_predictions(ours: Path, theirs: Path, ending: str, labels: dict[str, int]) -> list[str]:
    import numpy as np

    from lesiongen.io.images import read_image

    lines = []
    for path in sorted(ours.glob(f"*{ending}")):
        other = theirs / path.name
        if not other.is_file():
            lines.append(f"  {path.name}: no nnU-Net prediction")
            continue
        a, geo_a = read_image(path)
        b, geo_b = read_image(other)
        if a.shape != b.shape:
            lines.append(f"  {path.name}: shapes differ {a.shape} vs {b.shape}")
            continue
        parts = [f"voxel agreement {np.mean(a == b) * 100:.4f} %"]
        for name, value in labels.items():
            x, y = a == value, b == value
            total = int(x.sum()) + int(y.sum())
            dice = 2 * int((x & y).sum()) / total if total else float("nan")
            parts.append(f"Dice {name} {dice:.4f} ({int(x.sum())} vs {int(y.sum())} voxels)" if total
                         else f"{name} empty in both")
        geometry = "" if geo_a.matches(geo_b) is None else f"; geometry differs: {geo_a.matches(geo_b)}"
        lines.append(f"  {path.name}: " + ", ".join(parts) + geometry)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one); "
                                                                "an existing dataset / checkpoint there is reused")
    parser.add_argument("--realistic", action="store_true", help="180x210x170 voxels at 1 mm (default: the small demo)")
    parser.add_argument("--n_cases", type=int, default=6, help="lesion (training) cases of the demo dataset")
    parser.add_argument("--n_test", type=int, default=2, help="test scans to predict (imagesTs)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both tools")
    parser.add_argument("--disable_tta", action="store_true", help="predict without mirroring (both tools)")
    parser.add_argument("--nnunet_bin", type=Path, default=None, help="folder with nnUNetv2_predict (default: PATH)")
    parser.add_argument("--skip_nnunet", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    args = parser.parse_args()

    nnunet_predict = None
    if not args.skip_nnunet:
        cmd = "nnUNetv2_predict"
        nnunet_predict = str(args.nnunet_bin / cmd) if args.nnunet_bin else shutil.which(cmd)
        if nnunet_predict is None or not Path(nnunet_predict).is_file():
            parser.error(f"{cmd} not found; pip install nnunetv2 (own venv) and pass --nnunet_bin")

    require_new_folder(args.work)
    work = (args.work or Path(tempfile.mkdtemp(prefix="lesiongen_predict_bench_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    config = DemoConfig(n_lesion_cases=args.n_cases, n_healthy=0, n_test=args.n_test,
                        **(REALISTIC if args.realistic else {}))
    name = f"Dataset{config.dataset_id:03d}_{config.dataset_name}"
    dataset = raw / name
    threads = str(args.threads)
    env = {"lesiongen_raw": str(raw), "lesiongen_preprocessed": str(work / "lesiongen_preprocessed"),
           "lesiongen_results": str(work / "lesiongen_results"),
           "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(work / "nnunet_preprocessed"),
           "nnUNet_results": str(work / "nnunet_results"),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "nnUNet_def_n_proc": threads}
    bin_dir = Path(sys.executable).parent

    print(f"writing {args.n_cases} training + {args.n_test} test cases of {config.shape} voxels "
          f"({config.spacing} mm) to {dataset} ...", flush=True)
    write_demo_dataset(raw, config)
    lesiongen_model = work / "lesiongen_results" / name / "seg_none__lesiongenPlans"
    _run_step("lesiongen_plan_and_preprocess", [str(bin_dir / "lesiongen_plan_and_preprocess"), "-d",
                                                str(config.dataset_id), "-np", "1"], env)
    # one step: only the prediction machinery matters; no mirroring in the post-training validation (speed)
    _run_step("lesiongen_train seg (1 step)", [str(bin_dir / "lesiongen_train"), str(config.dataset_id), "seg",
                                               "0", "-device", "cpu", "--steps", "1",
                                               "--set", "mirror_validation=false", "--set", "num_workers=0"], env)
    write_nnunet_model(work / "nnunet_results", name, dataset, lesiongen_model)

    inputs = dataset / "imagesTs"
    ending = json.loads((dataset / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    n_inputs = len({p.name[: -len(ending) - 5] for p in inputs.glob(f"*{ending}")})
    plans = json.loads((lesiongen_model / "plans.json").read_text())
    stage = plans["stages"]["segmentation"]
    print(f"{n_inputs} test scan(s) of {config.shape} voxels; target spacing {plans['target_spacing']}, patch "
          f"{stage['patch_size']}; {args.threads} thread(s); mirroring {'off' if args.disable_tta else 'on'}",
          flush=True)

    tta = ["--disable_tta"] if args.disable_tta else []
    results: dict[str, Measurement] = {}
    out = {"lesiongen": work / "pred_lesiongen", "nnunet": work / "pred_nnunet"}
    for folder in out.values():
        shutil.rmtree(folder, ignore_errors=True)
    print("lesiongen_predict -m seg ...", flush=True)
    results["lesiongen"] = run_measured(
        [str(bin_dir / "lesiongen_predict"), "-d", str(config.dataset_id), "-i", str(inputs),
         "-o", str(out["lesiongen"]), "-m", "seg", "-f", "0", "-device", "cpu", *tta], env=env)
    if nnunet_predict:
        print("nnUNetv2_predict ...", flush=True)
        results["nnunet"] = run_measured(
            [nnunet_predict, "-i", str(inputs), "-o", str(out["nnunet"]), "-d", str(config.dataset_id),
             "-c", "3d_fullres", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", *tta], env=env)

    for tool, m in results.items():
        if m.returncode != 0:
            print(f"{tool} failed (exit {m.returncode}):\n{m.output_tail}")
            sys.exit(1)
    print()
    for tool, m in results.items():
        print(f"{tool:10s} wall {m.wall_seconds:7.1f} s ({m.wall_seconds / max(n_inputs, 1):6.1f} s/case)   "
              f"peak memory {m.peak_rss_mib:8.0f} MiB")
    if "nnunet" in results:
        ours, theirs = results["lesiongen"], results["nnunet"]
        print(f"ratio lesiongen / nnU-Net: wall time {ours.wall_seconds / theirs.wall_seconds:.2f}x "
              f"(target <= 0.8x), peak memory {ours.peak_rss_mib / theirs.peak_rss_mib:.2f}x")
        agreement = compare_predictions(out["lesiongen"], out["nnunet"], ending, plans["labels"])
        print("agreement of the predicted label maps (lesiongen vs nnU-Net):")
        print("\n".join(agreement))
    from lesiongen.models.checkpoint import load_checkpoint
    from lesiongen.utilities.provenance import model_record

    checkpoint = lesiongen_model / "fold_0" / "checkpoint_final.pt"
    payload = {"settings": {k: str(v) for k, v in vars(args).items()},
               "data": {"test_scans": n_inputs, "shape": list(config.shape), "spacing": list(config.spacing),
                        "patch": stage["patch_size"], "target_spacing": plans["target_spacing"]},
               "model": model_record(checkpoint, load_checkpoint(checkpoint).get("provenance")),
               "tools": {tool: {"wall_seconds": m.wall_seconds, "peak_rss_mib": m.peak_rss_mib}
                         for tool, m in results.items()}}
    if "nnunet" in results:
        payload["ratio"] = {"wall_time": ours.wall_seconds / theirs.wall_seconds,
                            "peak_memory": ours.peak_rss_mib / theirs.peak_rss_mib}
        payload["agreement"] = agreement
    write_results("predict_vs_nnunet" + ("_realistic" if args.realistic else ""), payload, args.json)
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
