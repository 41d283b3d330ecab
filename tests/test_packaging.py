"""The library's requirement ranges and the pinned versions it is tested with agree; the package says its version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            out[canonicalize_name(name)] = Version(version)
    return out


def test_every_requirement_is_a_range_that_its_pin_satisfies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pinned = pins()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} has no pin in constraints.txt"
        assert not any(s.operator == "==" for s in requirement.specifier), f"{requirement}: a range, not a pin"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"


def test_the_readme_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "-c constraints.txt" in command
    assert "pip install -e . -c constraints.txt" in readme  # the main job's set-up command too


def test_the_version_has_one_source():
    import lesiongen

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert Version(lesiongen.__version__)


def test_every_command_says_its_version_and_lesiongen_env_reports(capsys, lesiongen_folders):
    import pytest

    import lesiongen
    from lesiongen.cli import env, predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"lesiongen {lesiongen.__version__}"
    assert env.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lesiongen {lesiongen.__version__}") and "torch 2." in out
    assert f"lesiongen_results = {lesiongen_folders['results']}" in out
