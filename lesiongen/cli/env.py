"""``lesiongen_env``: versions, device, threads and data folders, for bug reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys

from lesiongen.cli.common import add_common_arguments, run_command

PACKAGES = ("torch", "torchvision", "monai", "diffusers", "dynamic-network-architectures", "batchgenerators",
            "numpy", "scipy", "SimpleITK", "nibabel", "blosc2")


def describe() -> list[str]:
    import torch

    from lesiongen.paths import preprocessed_root, raw_root, results_root
    from lesiongen.utilities.parallel import usable_cores
    from lesiongen.utilities.provenance import code_version

    code = code_version()
    lines = [f"lesiongen {code['lesiongen_version']}" + (f" (git {code['git_commit'][:12]}"
                                                          f"{', uncommitted changes' if code['git_dirty'] else ''})"
                                                          if code["git_commit"] else ""),
             f"python {sys.version.split()[0]} on {platform.platform()}",
             f"cpus {os.cpu_count()} ({usable_cores()} usable), torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"cuda {torch.version.cuda}: {names}")
    else:
        lines.append("cuda: not available (lesiongen runs on the CPU)")
    lines.append(f"mps: {'available' if torch.backends.mps.is_available() else 'not available'}")
    for name in PACKAGES:
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name}: not installed")
    for variable, folder in (("lesiongen_raw", raw_root()), ("lesiongen_preprocessed", preprocessed_root()),
                             ("lesiongen_results", results_root())):
        lines.append(f"{variable} = {folder}{'' if os.environ.get(variable) else ' (default)'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print lesiongen's version, the device, threads, the versions of "
                                                 "the packages it uses and its data folders (for bug reports).")
    add_common_arguments(parser)
    return run_command(lambda args: print("\n".join(describe())), parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
