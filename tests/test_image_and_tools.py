"""deploy/Dockerfile (multi-stage, slim, non-root) and tests/tools/install-tools.sh."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy_support import (
    CONFIG_DIR,
    DOCKERFILE,
    INSTALL_TOOLS,
    METRICS_PORT,
    MONITOR_UID,
    ROOT,
    dockerfile_global_args,
    dockerfile_stages,
)

pytestmark = pytest.mark.tools


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2
    base = dockerfile_global_args(DOCKERFILE)
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: base[m.group(1)], stage[0][1]).split()[0]
        for stage in stages
    ]
    assert all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image) for image in images), images
    assert "AS build" in stages[0][0][1]

    build = dict.fromkeys(i for i, _ in stages[0])
    assert "RUN" in build
    assert any("pip wheel" in args for i, args in stages[0] if i == "RUN")

    final = stages[-1]
    instructions = [i for i, _ in final]
    arguments = dict(final)  # last one wins, as in Docker
    assert arguments["USER"] == f"{MONITOR_UID}:{MONITOR_UID}"
    assert arguments["ENTRYPOINT"] == '["promo-monitor"]'
    assert arguments["CMD"] == '["run"]'
    assert arguments["EXPOSE"] == str(METRICS_PORT)
    assert arguments["VOLUME"] == "/var/lib/promo-monitor"
    assert f"PROMO_MONITOR_CONFIG={CONFIG_DIR}/config.yaml" in " ".join(
        a for i, a in final if i == "ENV"
    )
    assert instructions.index("USER") > max(
        n for n, i in enumerate(instructions) if i in {"RUN", "COPY"}
    )
    final_text = " ".join(a for _, a in final)
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "pip wheel"):
        assert tool not in final_text, f"{tool} in the final stage"
    copies = [a for i, a in final if i == "COPY"]
    assert copies, "the final stage must copy the venv from the build stage"
    assert all(a.startswith("--from=build ") for a in copies)

    # what the build copies from the context is what `pip install .` needs, nothing more
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    allowed = {"pyproject.toml", "monitor/", "./", "deploy/constraints.txt", "constraints.txt"}
    allowed |= {readme.group(1)} if readme else set()
    for args in (a for i, a in stages[0] if i == "COPY"):
        sources = [s for s in args.split() if not s.startswith("--")][:-1]
        assert set(sources) <= allowed, sources


def _fake_bin(directory: Path, scripts: dict[str, str]) -> Path:
    directory.mkdir()
    for name, body in scripts.items():
        path = directory / name
        path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
        path.chmod(0o755)
    for tool in ("sed", "chmod", "rm", "head", "cat"):
        real = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
        assert real, tool
        (directory / tool).symlink_to(real)
    return directory


def _run_install_tools(bin_dir: Path, policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(INSTALL_TOOLS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(bin_dir), "INSTALL_TOOLS_POLICY_RC": str(policy)},
    )


def test_install_tools_skips_loudly_when_not_root(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path / "bin", {"id": "echo 1000", "apt-get": "exit 99"})
    proc = _run_install_tools(bin_dir, tmp_path / "policy-rc.d")
    assert proc.returncode == 0, proc.stderr
    assert "SKIPPED" in proc.stderr
    assert "promtool" in proc.stderr
    assert not (tmp_path / "policy-rc.d").exists()


@pytest.mark.parametrize(
    ("candidate", "updates"),
    [("2.42.0+ds-5", []), ("(none)", ["apt-get update frontend="])],
    ids=["lists-know-the-packages", "lists-need-an-update"],
)
def test_install_tools_installs_as_root_without_starting_services(
    tmp_path: Path, candidate: str, updates: list[str]
) -> None:
    """Against fake apt tools: installs both packages; policy-rc.d only during the install."""
    log = tmp_path / "apt.log"
    policy = tmp_path / "policy-rc.d"
    tools = "promtool amtool prometheus prometheus-alertmanager"
    apt_get = f"""
echo "apt-get $* frontend=$DEBIAN_FRONTEND" >> {log}
if [ "$1" = install ]; then
    [ -x {policy} ] && {policy}; echo "policy exit $?" >> {log}
    for t in {tools}; do printf '#!/bin/sh\\necho "$0 version 1"\\n' > {tmp_path}/bin/$t; \
chmod +x {tmp_path}/bin/$t; done
fi"""
    bin_dir = _fake_bin(
        tmp_path / "bin",
        {
            "id": "echo 0",
            "apt-get": apt_get,
            "apt-cache": f'echo "$2:"; echo "  Installed: (none)"; echo "  Candidate: {candidate}"',
        },
    )
    proc = _run_install_tools(bin_dir, policy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    # `apt-get update` only when the package lists do not know the packages
    assert calls == [
        *updates,
        "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager "
        "frontend=noninteractive",
        "policy exit 101",  # services were forbidden to start during the install
    ]
    assert not policy.exists(), "the temporary policy-rc.d must be removed"
    assert "installed" in proc.stdout


# the image is reproducible: exact versions, and a build context of only what the build reads

CONSTRAINTS = ROOT / "deploy" / "constraints.txt"


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
