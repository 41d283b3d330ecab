"""benchmarks/measure.py records the code a benchmark started with, not the code found when it ends; the source
hash every provenance record carries follows the package's Python files and nothing else."""

from __future__ import annotations

from pathlib import Path

from conftest import load_benchmark

import lesiongen
from lesiongen.utilities.provenance import code_version, source_sha256


def load_measure():
    return load_benchmark("measure")


def test_a_commit_made_during_the_run_is_not_recorded_as_what_ran(monkeypatch):
    measure = load_measure()
    started_with = dict(measure._CODE_AT_START)
    monkeypatch.setattr(measure, "_PACKAGE_AT_START", "tree-a+0")
    monkeypatch.setattr(measure, "_package_state", lambda: "tree-b+0")
    record = measure.benchmark_provenance()
    assert record["git_commit"] == started_with["git_commit"]
    assert record["code_changed_during_run"] is True


def test_unchanged_code_is_recorded_as_unchanged():
    measure = load_measure()
    record = measure.benchmark_provenance()
    assert record["code_changed_during_run"] is False
    assert record["started"] <= record["date"]


def test_the_record_names_the_cpu_kernels_and_library_versions(tmp_path):
    import numpy
    import torch

    measure = load_measure()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    record = measure.machine_record(cpuinfo)
    assert record["cpu_model"] == "Test CPU 9000"
    assert record["cpu_flags"] == ["avx2", "avx512f", "amx_tile"]  # the first processor's, in NOTED_CPU_FLAGS order
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch"] == torch.__version__ and record["numpy"] == numpy.__version__
    assert measure.machine_record(tmp_path / "missing")["cpu_flags"] == []
    assert {"cpu_model", "cpu_capability", "torch"} <= set(measure.benchmark_provenance())


def test_the_source_hash_follows_the_python_files_and_nothing_else(tmp_path):
    package = tmp_path / "package"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    first = source_sha256(package)
    (package / "README.md").write_text("documentation")  # not code
    (package / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0")
    assert source_sha256(package) == first
    (package / "sub" / "b.py").write_text("y = 3\n")  # an edit, committed or not
    edited = source_sha256(package)
    assert edited != first
    (package / "sub" / "b.py").rename(package / "b.py")  # the same content as another module
    assert source_sha256(package) not in (first, edited)
    assert code_version()["source_sha256"] == source_sha256(Path(lesiongen.__file__).resolve().parent)
    assert source_sha256() == code_version()["source_sha256"]  # lesiongen's own by default
