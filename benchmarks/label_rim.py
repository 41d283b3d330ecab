"""How lesion-like the tissue just outside inserted lesions' labels is, against the real lesions of the raw dataset.

    python benchmarks/label_rim.py RAW_DATASET_FOLDER SYNTH_OUTPUT [SYNTH_OUTPUT ...] [--channel 1] [--json OUT]

SYNTH_OUTPUT is a ``lesiongen_predict -m synth`` output folder made from the raw dataset's ``imagesHealthy``. Per
set, on the scan grid, with each scan's channel z-scored over its brain mask: the mean intensity inside the labels,
in the one-voxel rim just outside them (voxels sharing a face with a label voxel, inside the brain), the share of
rim voxels brighter than the real lesions' 10th percentile, and labelled voxels per scan. A rim far brighter than
the real lesions' rim is lesion-like tissue left unlabelled, which a segmentation network trained on it learns as
background. It trains nothing and asserts nothing: the synthesis outputs are the caller's, so ``--made_by`` says
for each what produced it (recorded in the JSON; the provenance block is this script's run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import write_results  # noqa: E402


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def label_and_rim(image: Path, label: Path, brain_mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """The channel's z-scored values inside the label and in the one-voxel rim outside it."""
    brain = _load(brain_mask) > 0
    values = _load(image)
    values = (values - values[brain].mean()) / values[brain].std()
    lesion = _load(label) > 0
    rim = ndimage.binary_dilation(lesion) & ~lesion & brain  # voxels sharing a face with the label
    return values[lesion], values[rim]


def summarise(pairs: list[tuple[np.ndarray, np.ndarray]], lesion_p10: float) -> dict[str, float]:
    inside = np.concatenate([p[0] for p in pairs])
    rim = np.concatenate([p[1] for p in pairs])
    return {"scans": len(pairs), "label_mean": float(inside.mean()), "rim_mean": float(rim.mean()),
            "rim_brighter_than_real_lesion_p10": float(np.mean(rim > lesion_p10)),
            "label_voxels_per_scan": len(inside) / len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="the raw dataset folder (imagesTr, labelsTr, brainmasksTr, "
                                               "brainmasksHealthy)")
    parser.add_argument("outputs", type=Path, nargs="+", help="lesiongen_predict -m synth output folders")
    parser.add_argument("--channel", type=int, default=1, help="the channel to measure (default 1: the demo's FLAIR)")
    parser.add_argument("--made_by", nargs="+", default=None,
                        help="per output folder, what produced it (e.g. the command and commit)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.made_by is not None and len(args.made_by) != len(args.outputs):
        parser.error(f"--made_by: {len(args.made_by)} descriptions for {len(args.outputs)} output folders")
    ending = f"_{args.channel:04d}.nii.gz"
    cases = sorted(p.name[:-len(".nii.gz")] for p in (args.raw / "labelsTr").glob("*.nii.gz"))
    real = [label_and_rim(args.raw / "imagesTr" / f"{c}{ending}", args.raw / "labelsTr" / f"{c}.nii.gz",
                          args.raw / "brainmasksTr" / f"{c}.nii.gz") for c in cases]
    lesion_p10 = float(np.percentile(np.concatenate([p[0] for p in real]), 10))
    results = {"real": summarise(real, lesion_p10)}
    for folder in args.outputs:
        synthetic = sorted(p.name[:-len(".nii.gz")] for p in (folder / "labels").glob("*.nii.gz"))
        results[str(folder)] = summarise(
            [label_and_rim(folder / f"{c}{ending}", folder / "labels" / f"{c}.nii.gz",
                           args.raw / "brainmasksHealthy" / f"{c.split('_syn')[0]}.nii.gz") for c in synthetic],
            lesion_p10)
    print(f"{'set':<40} {'scans':>5} {'in label':>8} {'in rim':>7} {'rim > real p10':>14} {'voxels/scan':>11}")
    for name, row in results.items():
        print(f"{name:<40} {row['scans']:>5} {row['label_mean']:>8.2f} {row['rim_mean']:>7.2f} "
              f"{row['rim_brighter_than_real_lesion_p10']:>14.3f} {row['label_voxels_per_scan']:>11.0f}")
    made_by = dict(zip(map(str, args.outputs), args.made_by or [None] * len(args.outputs)))
    write_results("label_rim", {"raw": str(args.raw), "channel": args.channel, "real_lesion_p10": lesion_p10,
                                "sets": results, "made_by": made_by}, args.json)


if __name__ == "__main__":
    main()
