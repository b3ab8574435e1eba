"""`medsynth stack up` brings every service up as a real process; the README's curl line ingests a
scan; `medsynth ingest DIR` uploads a Decathlon folder with a summary of rejections; the api runs a
prepare-dataset job through Kafka and the trainer worker; `stack down` stops everything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medsynth.phantoms import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]


def medsynth(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsynth.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def stack_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    env.update(MEDSYNTH_HOME=str(tmp_path / "home"), MEDSYNTH_STACK_BASE_PORT="18700", MEDSYNTH_RECONCILE_EVERY_S="2")
    yield env
    medsynth("stack", "down", env=env)


def readme_curl_line() -> str:
    lines = [l for l in (REPO / "README.md").read_text().splitlines() if l.strip().startswith("curl ") and "/scans" in l]
    assert len(lines) == 1, "README should document exactly one curl line for ingesting a scan"
    return lines[0].strip()


def test_stack_up_ingest_prepare_down(stack_env: dict, tmp_path: Path) -> None:
    up = medsynth("stack", "up", env=stack_env)
    assert up.returncode == 0, up.stdout + up.stderr
    for name in ("broker", "api", "ingest", "trainer", "sampler", "segmenter", "evaluator"):
        assert re.search(rf"^{name}\s", up.stdout, re.M), up.stdout
    status = medsynth("stack", "status", env=stack_env)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running, ready") == 6

    data = tmp_path / "msd"
    write_phantom_dataset(data, n=6, seed=5, shape=(24, 24, 10))
    # the README's curl line, run inside the phantom folder, pointed at this test's port
    curl = readme_curl_line().replace(":8701/", ":18701/")
    result = subprocess.run(curl, shell=True, cwd=data, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and '"scan_id"' in result.stdout, (curl, result.stdout, result.stderr)

    (data / "imagesTr" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (data / "imagesTr" / "._phantom_001.nii.gz").write_bytes(b"macOS resource fork")  # must be ignored
    ingest = medsynth("ingest", str(data), "--dataset", "demo", env=stack_env)
    assert ingest.returncode == 1, ingest.stdout + ingest.stderr  # one rejection
    assert "accepted 5, already present 1, rejected 1" in ingest.stdout
    assert re.search(r"broken: HTTP 422: .*not a readable NIfTI", ingest.stdout), ingest.stdout

    with httpx.Client(base_url="http://127.0.0.1:18700", timeout=30) as api:
        ds = api.get("/v1/datasets/demo").json()
        assert ds["scans"] == 6 and ds["patients"] == 6 and ds["labelled_scans"] == 6
        job = api.post("/v1/datasets/demo/views", json={"size": 32, "val_fraction": 0.2, "test_fraction": 0.2}).json()
        deadline = time.monotonic() + 120
        while (job := api.get(f"/v1/jobs/{job['job_id']}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["state"] == "succeeded", job
        view = api.get(f"/v1/datasets/demo/views/{job['result_keys']['view'].split('/')[-2]}").json()
        assert sum(len(v) for v in view["patients"].values()) == 6
        metrics = httpx.get("http://127.0.0.1:18711/metrics").text
        assert 'medsynth_jobs_total{kind="prepare-dataset",outcome="succeeded"} 1.0' in metrics
        assert "medsynth_ingest_scans_total" in httpx.get("http://127.0.0.1:18701/metrics").text

    down = medsynth("stack", "down", env=stack_env)
    assert down.returncode == 0
    assert medsynth("stack", "status", env=stack_env).returncode == 1
    with pytest.raises(httpx.HTTPError):
        httpx.get("http://127.0.0.1:18700/healthz", timeout=2)
