"""Wall time and peak memory of a command and all its child processes (Linux /proc, no extra packages)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lesiongen.utilities.provenance import code_version, source_sha256


@dataclass
class Measurement:
    command: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_mib: float  # peak of the summed resident memory of the process tree
    output_tail: str
    timed_out: bool = False  # stopped (with its whole process group) after ``timeout`` seconds


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _tree_rss_kib(root: int) -> int:
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
        stack.extend(_children(pid))
    return total


def run_measured(command: list[str], env: dict[str, str] | None = None, interval: float = 0.05,
                 timeout: float | None = None, tail_lines: int = 30) -> Measurement:
    """Run ``command`` and sample its process tree's memory every ``interval`` seconds; after ``timeout`` seconds
    its process group (the command and the workers it spawned) is killed."""
    peak = 0
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    timed_out = False
    while process.poll() is None:
        peak = max(peak, _tree_rss_kib(process.pid))
        if timeout is not None and time.perf_counter() - start > timeout:
            timed_out = True
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            break
        time.sleep(interval)
    wall = time.perf_counter() - start
    reader.join(timeout=5)
    return Measurement(command, process.returncode, wall, peak / 1024, "".join(lines[-tail_lines:]), timed_out)


def _package_state() -> str:
    """The lesiongen package's source as it is now (``source_sha256``): a commit that only touches documentation
    leaves it as it is."""
    return source_sha256()


# The code a benchmark ran is the code at its start: a commit made while an hour-long run goes on must not be
# recorded as what produced its figures.
_CODE_AT_START = code_version()  # cached: later calls in this process give the same
_PACKAGE_AT_START = _CODE_AT_START["source_sha256"]
_STARTED = time.strftime("%Y-%m-%dT%H:%M:%S")


# instruction sets that change which CPU kernels torch runs (and so, after enough steps, the trained weights)
NOTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def machine_record(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU and the numeric libraries a figure came from. Training on a CPU is deterministic on one machine, but
    torch picks its kernels by instruction set, and their rounding differs: two machines with the same code and
    seeds train different weights, and a 1,000-step seg model's test Dice can move by points."""
    import platform

    import numpy
    import scipy
    import torch

    model, flags = None, set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # no /proc (macOS): the processor name alone
        pass
    model = model or platform.processor() or None
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": [flag for flag in NOTED_CPU_FLAGS if flag in flags], "torch": torch.__version__,
            "cuda": torch.version.cuda, "numpy": numpy.__version__, "scipy": scipy.__version__}


def benchmark_provenance() -> dict:
    """What a benchmark's figures came from: lesiongen's version, source hash and commit when the benchmark started
    (and whether the package's code had changed by its end), the machine and the dates."""
    import platform
    import sys

    return {**_CODE_AT_START, "code_changed_during_run": _package_state() != _PACKAGE_AT_START, "started": _STARTED,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpu_count": os.cpu_count(), **machine_record(), "from_scratch": True}


def write_results(name: str, payload: dict, path: Path | None = None) -> Path:
    """``payload`` with provenance as ``benchmarks/results/NAME_DATE.json`` (or ``path``)."""
    import json

    out = path or Path(__file__).resolve().parent / "results" / f"{name}_{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": benchmark_provenance(), **payload}, indent=1) + "\n")
    print(f"written: {out}")
    return out


def require_new_folder(folder: Path | None) -> None:
    """A benchmark starts from scratch: a work folder given by the user must be new or empty."""
    if folder is not None and folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder}: not empty; the benchmark starts from scratch (give a new or empty folder)")


@contextlib.contextmanager
def fresh_work_folder(folder: Path | None, prefix: str) -> Iterator[Path]:
    """The benchmark's work folder, resolved and created: ``folder`` when given (new or empty, see
    :func:`require_new_folder`), else a temporary one removed afterwards."""
    require_new_folder(folder)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = (folder or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        yield work


def run_step(name: str, command: list[str], env: dict, minutes: dict, stream: bool = False) -> None:
    """One step of a from-scratch benchmark: run ``command``, stop the benchmark with its output tail when it
    fails, record its minutes under ``name``. ``stream``: its output goes to the console as it comes (a step of
    an hour or more) instead of being kept for the failure message."""
    import sys

    print(f"+ {Path(command[0]).name} {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=not stream, text=True)
    if result.returncode != 0:
        tail = "" if stream else ":\n" + (result.stdout + result.stderr)[-3000:]
        sys.exit(f"{name} failed (exit {result.returncode}){tail}")
    minutes[name] = round((time.perf_counter() - start) / 60, 2)


def work_env(work: Path) -> dict[str, str]:
    """The environment of a from-scratch benchmark: lesiongen's three data folders inside ``work``."""
    return dict(os.environ, lesiongen_raw=str(work / "raw"), lesiongen_preprocessed=str(work / "preprocessed"),
                lesiongen_results=str(work / "results"))


def console_script(name: str) -> str:
    """A lesiongen command of the environment running the benchmark (``pip install -e .`` puts them next to its
    Python; never a hand-written wrapper, see the README's GPU notes)."""
    import sys

    return str(Path(sys.executable).parent / name)


BENEFIT_DEMO_SEED = 3  # the benefit benchmarks' demo dataset: the same seed and sizes give the same test scans


def add_benefit_demo_arguments(parser, n_test: int = 12) -> None:
    """The sizes of the benefit benchmarks' demo dataset (:func:`benefit_demo_arguments`)."""
    parser.add_argument("--realistic", action="store_true", help="the 1 mm variant (180x210x170 voxels)")
    parser.add_argument("--n_lesion_cases", type=int, default=8)
    parser.add_argument("--n_healthy", type=int, default=8)
    parser.add_argument("--n_test", type=int, default=n_test)


def benefit_demo_arguments(realistic: bool, n_lesion_cases: int = 8, n_healthy: int = 8,
                           n_test: int = 12) -> list[str]:
    """``lesiongen_make_demo_dataset``'s arguments for the dataset the benefit benchmarks share (augmentation_benefit,
    postprocessing, diffmask_off_sphere): one seed, so that runs of the same sizes hold the same scans and one
    run's predictions can be scored against another's test labels."""
    return ["--n_lesion_cases", str(n_lesion_cases), "--n_healthy", str(n_healthy), "--n_test", str(n_test),
            "--seed", str(BENEFIT_DEMO_SEED), *(["--realistic"] if realistic else [])]


def write_and_plan_demo(env: dict, minutes: dict, dataset_id: str, demo_arguments: list[str],
                        num_processes: int) -> None:
    """The first two steps of every from-scratch benchmark: ``lesiongen_make_demo_dataset`` with
    ``demo_arguments`` (which write dataset ``dataset_id``), then its plans and preprocessing with the CPU preset."""
    run_step("dataset", [console_script("lesiongen_make_demo_dataset"), *demo_arguments], env, minutes)
    run_step("plan_and_preprocess", [console_script("lesiongen_plan_and_preprocess"), "-d", dataset_id, "-np",
                                     str(num_processes), "--preset", "cpu"], env, minutes)
