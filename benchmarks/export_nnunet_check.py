"""Integration check: does real nnU-Net v2 accept lesiongen's export?

    python benchmarks/export_nnunet_check.py --nnunet_bin /path/to/nnunet/venv/bin [--synthetic sphere] [--n 4]

Writes the default demo dataset into a temporary folder, plans and preprocesses it, trains ``spheremask`` (or the
generator of ``--synthetic``) and ``inpaint`` on fold 0 for a few steps (the check is about the files, not the
lesions' quality), exports real + ``--n`` synthetic cases with ``lesiongen_export_nnunet --id 601`` and runs
``nnUNetv2_extract_fingerprint -d 601 --verify_dataset_integrity`` from the given nnU-Net installation on it.
Prints lesiongen's own structural check and nnU-Net's verdict. Not a test: nothing is installed at test time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

GENERATOR = {"sphere": "spheremask", "unetmask": "unetmask", "diffmask": "diffmask"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet_bin", type=Path, required=True, help="bin folder of a venv with nnunetv2")
    parser.add_argument("--synthetic", choices=sorted(GENERATOR), default="sphere")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = dict(os.environ, lesiongen_raw=str(root / "raw"), lesiongen_preprocessed=str(root / "pre"),
                   lesiongen_results=str(root / "res"))
        run = lambda *command: subprocess.run(list(command), check=True, env=env)  # noqa: E731
        run("lesiongen_make_demo_dataset", "--n_lesion_cases", "6", "--n_healthy", "2", "--n_test", "0")
        run("lesiongen_plan_and_preprocess", "-d", "501", "-np", "2")
        for name in (GENERATOR[args.synthetic], "inpaint"):
            run("lesiongen_train", "501", name, "0", "-device", "cpu", "--steps", str(args.steps), "--batch_size", "4")
        export_root = root / "nnUNet_raw"
        run("lesiongen_export_nnunet", "-d", "501", "--synthetic", args.synthetic, "--n", str(args.n), "-o",
            str(export_root), "--id", "601", "-f", "0")
        from lesiongen.sharing.export_nnunet import check_nnunet_layout

        folder = next(export_root.glob("Dataset601_*"))
        problems = check_nnunet_layout(folder)
        print(f"lesiongen structural check of {folder.name}: {'OK' if not problems else problems}")
        nnunet_env = dict(env, nnUNet_raw=str(export_root), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
                          nnUNet_results=str(root / "nnUNet_results"))
        result = subprocess.run([str(args.nnunet_bin / "nnUNetv2_extract_fingerprint"), "-d", "601",
                                 "--verify_dataset_integrity", "-np", "2"], env=nnunet_env, capture_output=True,
                                text=True)
        print(f"nnUNetv2_extract_fingerprint --verify_dataset_integrity: exit {result.returncode}")
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:])


if __name__ == "__main__":
    main()
