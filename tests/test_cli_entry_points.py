"""Every console script returns an exit status (int) instead of calling sys.exit, and runs under ``python -m``."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_exists_and_returns_its_status(lesiongen_folders, capsys):
    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        entry = getattr(importlib.import_module(module), function)
        source = ast.parse(Path(importlib.import_module(module).__file__).read_text())
        definition = next(n for n in source.body if isinstance(n, ast.FunctionDef) and n.name == function)
        assert isinstance(definition.body[-1], ast.Return), f"{name}: {function} must return the exit status"
        assert callable(entry)


def test_no_cli_module_calls_sys_exit():
    for path in sorted((ROOT / "lesiongen" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "exit" and getattr(n.func.value, "id", "") == "sys"]
        assert not calls, f"{path.name} calls sys.exit; return the status from main() instead"


def test_a_user_error_is_status_1_not_an_exception(lesiongen_folders, capsys):
    from lesiongen.cli.plan_and_preprocess import main_plan

    assert main_plan(["-d", "999"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
