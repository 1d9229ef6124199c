"""The three dependency declarations must agree with each other.

requirements-dev.txt holds the exact pins, environment.yml repeats them for conda,
and pyproject.toml holds the ranges that installs outside the dev environment
resolve against. `make venv` installs axolab with --no-deps, so a dependency that
is declared but not pinned would silently be missing from the dev venv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
# packaging is not declared by axolab; pytest itself depends on it.
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # stdlib from Python 3.11

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-dev.txt"
ENVIRONMENT = ROOT / "environment.yml"
PYPROJECT = ROOT / "pyproject.toml"


def _exact_pins(lines: list[str], source: str) -> tuple[dict[str, str], list[str]]:
    """Map normalized name -> version for `name==version` lines.

    Anything that is not an exact pin is reported rather than skipped, so a loosened
    line cannot slip out of every later check.
    """
    pins: dict[str, str] = {}
    problems: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{source}: cannot parse {line!r}: {exc}")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{source}: {req.name} is not an exact pin: {line!r}")
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"{source}: {req.name} pinned twice")
        pins[name] = specs[0].version
    return pins, problems


def read_requirements(path: Path) -> tuple[dict[str, str], list[str]]:
    return _exact_pins(path.read_text().splitlines(), path.name)


def read_environment(path: Path) -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load(path.read_text())
    pip_sections = [d["pip"] for d in env.get("dependencies", []) if isinstance(d, dict) and "pip" in d]
    if len(pip_sections) != 1:
        return {}, [f"{path.name}: expected exactly one pip: section, found {len(pip_sections)}"]
    return _exact_pins([str(item) for item in pip_sections[0]], f"{path.name} pip")


def read_pyproject(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def declared_ranges(pyproject: dict) -> dict[str, SpecifierSet]:
    """Normalized name -> range, over runtime dependencies and the test and bench extras."""
    project = pyproject["project"]
    reqs = list(project.get("dependencies", []))
    for extra in ("test", "bench"):
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    ranges: dict[str, SpecifierSet] = {}
    for line in reqs:
        req = Requirement(line)
        ranges[canonicalize_name(req.name)] = req.specifier
    return ranges


def compare_pins(a: dict[str, str], a_src: str, b: dict[str, str], b_src: str) -> list[str]:
    problems = []
    for name in sorted(a.keys() | b.keys()):
        va, vb = a.get(name), b.get(name)
        if va is None:
            problems.append(f"{name}: pinned to {vb} in {b_src} but missing from {a_src}")
        elif vb is None:
            problems.append(f"{name}: pinned to {va} in {a_src} but missing from {b_src}")
        elif Version(va) != Version(vb):
            problems.append(f"{name}: {a_src} pins {va} but {b_src} pins {vb}")
    return problems


def check_pins_within_ranges(pins: dict[str, str], ranges: dict[str, SpecifierSet], pins_src: str) -> list[str]:
    problems = []
    for name in sorted(pins.keys() | ranges.keys()):
        if name not in ranges:
            problems.append(
                f"{name}: pinned to {pins[name]} in {pins_src} but not declared in pyproject.toml "
                "(dependencies or the test and bench extras)"
            )
        elif name not in pins:
            # The dev venv installs axolab with --no-deps, so this would be absent there.
            problems.append(f"{name}: declared in pyproject.toml as {ranges[name] or 'any'} but not pinned in {pins_src}")
        elif not ranges[name].contains(pins[name], prereleases=True):
            problems.append(f"{name}: {pins_src} pins {pins[name]}, outside pyproject.toml range {ranges[name]}")
    return problems


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# --- the real files ---------------------------------------------------------


def test_requirements_and_environment_pin_the_same_versions():
    req, req_problems = read_requirements(REQUIREMENTS)
    env, env_problems = read_environment(ENVIRONMENT)
    _fail_on(req_problems + env_problems + compare_pins(req, REQUIREMENTS.name, env, ENVIRONMENT.name))


def test_pins_are_declared_and_within_pyproject_ranges():
    req, problems = read_requirements(REQUIREMENTS)
    ranges = declared_ranges(read_pyproject(PYPROJECT))
    _fail_on(problems + check_pins_within_ranges(req, ranges, REQUIREMENTS.name))


def test_torch_is_pinned_exactly():
    # Pinned in the same pip call as everything else, or pip may pick a CUDA build.
    req, problems = read_requirements(REQUIREMENTS)
    torch_problems = [p for p in problems if "torch" in p]
    assert "torch" in req, "; ".join(torch_problems) or f"torch has no pin in {REQUIREMENTS.name}"


def test_environment_python_satisfies_requires_python():
    env = yaml.safe_load(ENVIRONMENT.read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.replace(" ", "").startswith("python=")]
    assert len(pythons) == 1, f"{ENVIRONMENT.name}: expected one python=X.Y entry, found {pythons}"
    version = pythons[0].split("=", 1)[1].strip()
    requires = SpecifierSet(read_pyproject(PYPROJECT)["project"]["requires-python"])
    assert requires.contains(version), f"{ENVIRONMENT.name} python {version} is outside requires-python {requires}"


# --- the checks themselves must be able to fail -------------------------------


def _altered_requirements(tmp_path: Path, name: str, new_version: str) -> Path:
    lines = REQUIREMENTS.read_text().splitlines()
    out, hit = [], False
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#") and canonicalize_name(Requirement(line).name) == name:
            line, hit = f"{name}=={new_version}", True
        out.append(line)
    assert hit, f"{name} not found in {REQUIREMENTS.name}"
    path = tmp_path / REQUIREMENTS.name
    path.write_text("\n".join(out) + "\n")
    return path


def test_mismatched_pin_is_reported_with_both_versions(tmp_path):
    real, _ = read_requirements(REQUIREMENTS)
    altered, _ = read_requirements(_altered_requirements(tmp_path, "tqdm", "0.0.1"))
    env, _ = read_environment(ENVIRONMENT)
    found = compare_pins(altered, REQUIREMENTS.name, env, ENVIRONMENT.name)
    assert [p for p in found if "tqdm" in p and "0.0.1" in p and real["tqdm"] in p], found


def test_pin_outside_range_is_reported(tmp_path):
    altered, _ = read_requirements(_altered_requirements(tmp_path, "transformers", "4.57.0"))
    found = check_pins_within_ranges(altered, declared_ranges(read_pyproject(PYPROJECT)), REQUIREMENTS.name)
    assert [p for p in found if "transformers" in p and "4.57.0" in p and "<6" in p], found


def test_undeclared_and_unpinned_packages_are_reported():
    ranges = {"torch": SpecifierSet(">=2.4"), "tqdm": SpecifierSet()}
    found = check_pins_within_ranges({"torch": "2.13.0", "numpy": "2.0.0"}, ranges, "pins")
    assert any("numpy" in p and "not declared" in p for p in found)
    assert any("tqdm" in p and "not pinned" in p for p in found)


def test_loose_pins_are_rejected(tmp_path):
    path = tmp_path / "requirements-dev.txt"
    path.write_text("torch>=2.4\ntqdm==4.*\npyyaml==6.0.3  # trailing comment\n")
    pins, problems = read_requirements(path)
    assert pins == {"pyyaml": "6.0.3"}
    assert len(problems) == 2 and "torch" in problems[0] and "tqdm" in problems[1]
