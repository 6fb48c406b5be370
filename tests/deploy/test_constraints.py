"""constraints.txt, the lock: it pins every dependency pyproject.toml names (and
theirs), each pin satisfies pyproject's own range, this virtualenv holds exactly
the pinned versions, and every install (make, CI, the image, the systemd
instructions) uses it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.procs import ROOT

LOCK = ROOT / "constraints.txt"
TEXT = LOCK.read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = ("dev", "bench")


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in TEXT.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"not a name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"{name} pinned twice"
        found[name] = Version(match.group(2))
    return found


PINS = pins()


def applies(requirement: Requirement, extras: tuple[str, ...]) -> bool:
    if requirement.marker is None:
        return True
    environment: dict[str, str] = {str(k): str(v) for k, v in default_environment().items()}
    return any(requirement.marker.evaluate({**environment, "extra": e}) for e in ("", *extras))


def direct_requirements() -> list[Requirement]:
    lines = [*PYPROJECT["dependencies"], *(r for e in EXTRAS for r in PYPROJECT["optional-dependencies"][e])]
    return [r for r in map(Requirement, lines) if applies(r, ())]


def test_the_lock_says_how_to_regenerate_it_and_is_not_the_package_itself() -> None:
    header = [line for line in TEXT.splitlines() if line.startswith("#")]
    assert TEXT.startswith("#")
    assert any("make constraints" in line for line in header)
    assert any("pip freeze --exclude-editable" in line for line in header)
    assert "ssehub" not in PINS


def test_every_dependency_of_pyproject_is_pinned_within_its_range() -> None:
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in PINS, f"{name} is not in constraints.txt: run `make constraints`"
        assert requirement.specifier.contains(PINS[name], prereleases=True), (
            f"{name}=={PINS[name]} is outside pyproject's {requirement.specifier}: run `make constraints`"
        )


def installed_dependencies() -> dict[str, str]:
    """Every distribution ssehub[dev,bench] needs that is installed here, with its version."""
    seen: dict[str, str] = {}
    todo = direct_requirements()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this venv does not have (bench, without `make bench`)
        seen[name] = dist.version
        wanted = tuple(requirement.extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if applies(sub, wanted):
                todo.append(sub)
    return seen


def test_this_virtualenv_holds_exactly_the_locked_versions() -> None:
    # `make` installs with -c constraints.txt, so a venv it made matches; a
    # mismatch means the lock or the venv moved (make constraints, or rm -rf .venv).
    installed = installed_dependencies()
    assert "fastapi" in installed
    assert "pytest" in installed
    unpinned = sorted(set(installed) - set(PINS))
    assert not unpinned, f"installed but not in constraints.txt: {unpinned}"
    differ = {n: (v, str(PINS[n])) for n, v in installed.items() if Version(v) != PINS[n]}
    assert not differ, f"installed vs locked: {differ}"


def test_every_install_uses_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"^\t(.* -e '?\.(?:\[[a-z,]+\])?'?)$", makefile, flags=re.MULTILINE)
    project = [line for line in installs if "-lock" not in line]  # but `make constraints`
    assert len(project) == 3, installs  # run, test, bench
    assert all(line.startswith("$(PIP_INSTALL) ") for line in project), project
    assert re.search(r"^PIP_INSTALL := .*pip install .*-c constraints\.txt$", makefile, re.MULTILINE)
    for stamp in ("$(VENV)/.installed:", "$(STAMP):", "$(VENV)/.installed-bench:"):
        (rule,) = [line for line in makefile.splitlines() if line.startswith(stamp)]
        assert "constraints.txt" in rule, rule  # a new lock reinstalls
    # CI installs through make.
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert "-c constraints.txt" in (ROOT / "deploy" / "Dockerfile").read_text()
    assert (
        "-c /path/to/ssehub/constraints.txt" in (ROOT / "deploy" / "systemd" / "ssehub.service").read_text()
    )
