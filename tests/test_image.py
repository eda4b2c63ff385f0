"""The image is reproducible: exact dependency versions from deploy/constraints.txt, and a build
context of only what the build reads (.dockerignore)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            found[canonicalize_name(name)] = Version(version)
    return found


def test_every_runtime_dependency_is_pinned_within_its_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = pins()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} has no pin in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pinned[name]), (name, str(pinned[name]))
    # test and benchmark tools stay out of the image
    for extra in project["optional-dependencies"].values():
        for text in extra:
            assert canonicalize_name(Requirement(text).name) not in pinned, text


def test_the_image_installs_with_the_constraints() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"COPY deploy/constraints\.txt \./constraints\.txt", text)
    assert re.search(r"pip install --constraint constraints\.txt /dist/\*\.whl", text)


def test_the_build_context_holds_only_what_the_build_reads() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # everything out, then the exceptions
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(source.rstrip("/") for source in line.split()[1:-1])
    assert copied == included
