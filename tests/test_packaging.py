"""pyproject.toml declares what the code imports, as ranges, and constraints.txt pins every
declared distribution to a version inside its range (fast: no Ray, nothing imported)."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qpeft", "pipelines")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirements() -> dict[str, list[Requirement]]:
    """'dependencies' or the extra's name -> its requirements (the project's own
    `qpeft-ray[...]` left out)."""
    meta = project()
    groups = {"dependencies": meta["dependencies"], **meta.get("optional-dependencies", {})}
    own = canonicalize_name(meta["name"])
    return {
        group: [r for r in map(Requirement, lines) if canonicalize_name(r.name) != own]
        for group, lines in groups.items()
    }


def declared() -> set[str]:
    return {canonicalize_name(r.name) for group in requirements().values() for r in group}


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the files of qpeft/ and pipelines/ importing it."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_comes_from_a_declared_distribution():
    providers = importlib.metadata.packages_distributions()
    names = declared()
    problems = []
    for module, files in sorted(imported_modules().items()):
        where = ", ".join(sorted(files))
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {where}): no installed distribution has it")
        elif not dists & names:
            problems.append(
                f"{module} (imported by {where}) comes from {', '.join(sorted(dists))}, "
                "which pyproject.toml declares neither in dependencies nor in an extra"
            )
    assert not problems, "\n".join(problems)


def test_core_dependencies_are_ranges_not_pins():
    pinned = [
        str(r)
        for r in requirements()["dependencies"]
        if any(spec.operator in ("==", "===") for spec in r.specifier)
    ]
    assert not pinned, f"pyproject.toml pins core dependencies with ==: {pinned}"


def constraints() -> dict[str, str]:
    """name -> version of every `name==version` line of constraints.txt."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"constraints.txt:{number}: not name==version: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt:{number}: {match[1]} pinned twice"
        pins[name] = match[2]
    return pins


def test_constraints_pin_every_declared_distribution_inside_its_range():
    pins = constraints()
    problems = []
    for group, reqs in requirements().items():
        for r in reqs:
            if r.marker is not None and not r.marker.evaluate({"extra": group}):
                continue  # for another Python or platform than the one pinned
            name = canonicalize_name(r.name)
            if name not in pins:
                problems.append(f"{r} (pyproject.toml {group}): not pinned in constraints.txt")
            elif not r.specifier.contains(pins[name], prereleases=True):
                problems.append(
                    f"{r} (pyproject.toml {group}): constraints.txt pins {name}=={pins[name]}, "
                    "outside the range"
                )
    assert not problems, "\n".join(problems)
