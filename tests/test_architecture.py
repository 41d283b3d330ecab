"""The layer map in documentation/architecture.md is the rule: no module imports a layer below its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "documentation" / "architecture.md"
PACKAGE = ROOT / "lesiongen"


def layer_table() -> dict[str, int]:
    """module prefix -> layer number, from the markdown table's first two columns."""
    layers = {}
    for line in MAP.read_text().splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            for name in re.findall(r"`(lesiongen[\w.]*)`", match.group(2)):
                layers[name] = int(match.group(1))
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return layers[prefix]
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every lesiongen import in ``source``, at any depth (imports inside functions count)."""
    tree = ast.parse(source)
    found = []
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lesiongen"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "lesiongen":
                if name == "lesiongen":  # "from lesiongen import workflow" imports the submodule
                    found += [(node.lineno, f"lesiongen.{a.name}") for a in node.names]
                else:
                    found.append((node.lineno, name))
    return found


def test_the_table_names_every_package():
    layers = layer_table()
    for path in sorted(PACKAGE.rglob("*.py")):
        layer_of(module_name(path), layers)  # KeyError: a module the map does not place


def test_no_module_imports_a_layer_below_its_own():
    layers = layer_table()
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path), layers)
        for line, target in imported_modules(path.read_text(), module_name(path), path.name == "__init__.py"):
            if target == "lesiongen":
                continue
            if layer_of(target, layers) > own:
                violations.append(f"{path.relative_to(ROOT)}:{line} (layer {own}) imports {target} "
                                  f"(layer {layer_of(target, layers)})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_an_upward_import_inside_a_function():
    # a real layer-1 file with a function-level import appended, and a relative import
    source = (PACKAGE / "io" / "images.py").read_text()
    source += "\n\ndef f():\n    from lesiongen.training.base import Trainer\n    from ..cli import common\n"
    targets = [t for _, t in imported_modules(source, "lesiongen.io.images")]
    assert "lesiongen.cli" in targets
    assert "lesiongen.training.base" in targets
    assert layer_of("lesiongen.training.base", layer_table()) > layer_of("lesiongen.io.images", layer_table())


@pytest.mark.parametrize("module, layer", [("lesiongen.utilities.files", 0), ("lesiongen.models.inpainter", 5),
                                           ("lesiongen.cli.predict", 11), ("lesiongen", 0)])
def test_layers_are_read_from_the_map(module, layer):
    assert layer_of(module, layer_table()) == layer
