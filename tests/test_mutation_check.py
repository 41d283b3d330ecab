"""The mutation check (benchmarks/mutation_check.py) cannot rot silently: every mutant's fragment is in today's code
exactly once, and every test it names exists, so a refactoring that moves a line makes this fail, not the check
skip or mutate nothing."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _test_functions(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


def test_every_fragment_occurs_once_and_every_named_test_exists():
    check = load_benchmark("mutation_check")
    mutants = check.MUTANTS
    assert len({m.name for m in mutants}) == len(mutants)
    for mutant in mutants:
        assert check.fragment_found(mutant), mutant.name
        assert mutant.original != mutant.replacement, mutant.name
        for target in mutant.tests:
            file, _, function = target.partition("::")
            assert (ROOT / file).is_file(), f"{mutant.name}: {file}"
            if function:
                assert function.split("[")[0] in _test_functions(ROOT / file), f"{mutant.name}: {target}"
