"""The pipeline in containers (`make test-containers`): the locally built images, deploy/compose.yaml with
deploy/compose.podman.yaml as `podman-compose config` merges them, each service a container started
through testcontainers on podman's Docker-compatible API (`podman system service`).

Not part of `make test`: tests/conftest.py leaves this folder out unless MEDSYNTH_CONTAINER_TESTS=1, which
`make test-containers` sets (after building what images are missing). Timings go to
bench-results/containers/ when the whole path ran.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from compose_runner import ComposeError, ComposeRun, podman_ulimits

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE_FILE = DEPLOY / "compose.yaml"
OVERRIDE_FILE = DEPLOY / "compose.podman.yaml"
PROJECT = "medsynth-ct"
RESULTS = REPO / "bench-results" / "containers"
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"  # `make test-containers` installs it


def compose_config(env_file: Path, *files: Path) -> dict:
    """What `podman-compose config` makes of ``files`` with ``env_file`` (the `docker compose config` of
    a compose implementation: merged, interpolated, profiles applied); fails the test with its error."""
    if not PODMAN_COMPOSE.exists():
        pytest.fail(f"{PODMAN_COMPOSE} is missing: `make test-containers` installs podman-compose into the venv")
    argv = [str(PODMAN_COMPOSE), "--project-name", PROJECT, *[a for f in files for a in ("-f", str(f))], "--env-file", str(env_file), "config"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """This session's folder (the env file, podman's socket): of its own, not under pytest's basetemp, which
    another pytest session started meanwhile may clean up."""
    folder = Path(tempfile.mkdtemp(prefix="medsynth-containers-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def env_file(workdir: Path) -> Path:
    """deploy/.env.example with fresh random secrets (the store's keys, the metrics token): what an operator's
    deploy/.env holds. Mode 0600."""
    lines = []
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        if key == "MEDSYNTH_S3_ACCESS_KEY":
            line = f"{key}=medsynth-{secrets.token_hex(6)}"
        elif key in ("MEDSYNTH_S3_SECRET_KEY", "MEDSYNTH_METRICS_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
            line = f"{key}={secrets.token_urlsafe(30)}"
        lines.append(line)
    path = workdir / "env"
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def env_values(env_file: Path) -> dict[str, str]:
    return dict(l.split("=", 1) for l in env_file.read_text().splitlines() if l.strip() and not l.startswith("#"))


@pytest.fixture(scope="session")
def base_config(env_file: Path) -> dict:
    return compose_config(env_file, BASE_FILE)


@pytest.fixture(scope="session")
def config(env_file: Path) -> dict:
    return compose_config(env_file, BASE_FILE, OVERRIDE_FILE)


@pytest.fixture(scope="session")
def podman_api(workdir: Path) -> Iterator[str]:
    """`podman system service` on a socket of this session, with runc (crun refuses the hybrid cgroups of
    the team's machines); DOCKER_HOST points testcontainers and docker-py at it, and Ryuk (testcontainers'
    reaper, an image from a registry) is off: the fixtures remove what they start."""
    if shutil.which("podman") is None:
        pytest.fail("the container tests need podman (apt-get install podman buildah runc debootstrap)")
    folder = workdir
    sock = folder / "podman.sock"
    with open(folder / "service.log", "wb") as log:
        service = subprocess.Popen(["podman", "--runtime", "runc", "system", "service", "--time=0", f"unix://{sock}"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"unix://{sock}"
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    os.environ.update(DOCKER_HOST=url, TESTCONTAINERS_RYUK_DISABLED="true")
    try:
        import docker

        deadline = time.monotonic() + 60
        while True:
            try:
                docker.from_env().ping()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if service.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"podman system service did not answer on {sock}: {(folder / 'service.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def results() -> Iterator[dict]:
    """What the tests measured; written to bench-results/containers/ once the whole path ran
    (``results["complete"]``), else only to the session's log."""
    found: dict = {"complete": False}
    yield found
    if found.pop("complete"):
        from container_report import write_results

        write_results(RESULTS, found)
        print(f"\ncontainer test results: {RESULTS / 'results.md'}")
    else:
        print("\ncontainer test (incomplete): " + json.dumps(found, default=str)[:4000])


@pytest.fixture(scope="session")
def stack(podman_api: str, config: dict, results: dict) -> Iterator[ComposeRun]:
    """Every service of the merged model up: each container started once its dependencies are, and
    healthy (the one-shot bucket and topic jobs: exited 0). On the way out every container's log is kept
    in test-artifacts/containers/<time>/, then the containers and volumes are removed."""
    import docker

    client = docker.from_env()
    missing = sorted({s["image"] for s in config["services"].values() if not _image_exists(client, s["image"])})
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)} (`make test-containers` builds what is missing with `make images`)")
    run = ComposeRun(config, PROJECT, DEPLOY, host_kwargs={"ulimits": podman_ulimits()})
    logs = REPO / "test-artifacts" / "containers" / time.strftime("%Y%m%d-%H%M%S")  # git-ignored; kept after the run
    logs.mkdir(parents=True, exist_ok=True)
    results["machine"] = {"cpus": os.cpu_count(), "load_at_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                          "engine": f"podman {client.version().get('Version')}"}
    results["images"] = {name: spec["image"] for name, spec in config["services"].items()}
    started = time.monotonic()
    try:
        run.up()
        results["up"] = {"wall_s": round(time.monotonic() - started, 1),
                         "services": {name: {"started_at_s": round(t.started, 1), "start_to_ready_s": round(t.start_to_ready, 1)}
                                      for name, t in run.times.items()}}
        yield run
    except ComposeError:
        for name in run.containers:
            print(f"--- {name} ---\n{run.logs(name, 30)}")
        raise
    finally:
        for name in run.containers:
            (logs / f"{name}.log").write_text(run.logs(name, 2000))
        print(f"\ncontainer logs: {logs}")
        run.down()


def _image_exists(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
