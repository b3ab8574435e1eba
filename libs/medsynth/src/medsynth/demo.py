"""`medsynth demo`: the main job end to end on one machine, through the real services.

Starts the local stack, ingests phantom scans (or a Decathlon folder given with ``--data``) through
the ingest service, prepares training views split by patient through the api (a prepare-dataset job
over Kafka, run by the trainer worker), prints what came out, and stops the stack.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from medsynth.core.errors import MedsynthError
from medsynth.core.settings import Settings


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 1800, echo=print) -> dict:
    """Poll a job until it is terminal, echoing progress; raise if it did not succeed."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    with tqdm(total=100, unit="%", desc=job_id, bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix}") as bar:
        while True:
            job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            bar.n = round(job["progress"] * 100)
            bar.set_postfix_str(f"{job['state']} {job['message']}")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise MedsynthError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(0.5)
    if job["state"] != "succeeded":
        raise MedsynthError(f"job {job_id} {job['state']}: {job['error']}")
    return job


def run_demo(settings: Settings, data: Path | None, *, dataset: str = "demo", phantoms: int = 12, echo=print) -> dict:
    from medsynth import stack
    from medsynth.ingest_client import ingest_folder
    from medsynth.phantoms import write_phantom_dataset

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    echo("== starting the local stack")
    stack.up(settings, echo=echo)
    timings["stack up"] = time.monotonic() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if data is None:
                data = Path(tmp) / "phantoms"
                write_phantom_dataset(data, n=phantoms, seed=0)
                echo(f"== wrote {phantoms} phantom scans to {data}")
            t = time.monotonic()
            echo(f"== ingesting {data} into dataset {dataset!r}")
            summary = ingest_folder(data, dataset, f"http://127.0.0.1:{settings.stack_base_port + 1}")
            echo("\n".join(summary.lines()))
            timings["ingest"] = time.monotonic() - t
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.stack_base_port}", timeout=60) as api:
            t = time.monotonic()
            echo("== preparing 64x64 training slices, split by patient")
            job = api.post(f"/v1/datasets/{dataset}/views", json={"size": 64}).raise_for_status().json()
            job = wait_for_job(api, job["job_id"], echo=echo)
            view_id = job["result_keys"]["view"].split("/")[-2]
            view = api.get(f"/v1/datasets/{dataset}/views/{view_id}").raise_for_status().json()
            timings["prepare"] = time.monotonic() - t
    finally:
        echo("== stopping the stack")
        stack.down(settings, echo=echo)
    for split in ("train", "val", "test"):
        echo(f"{split:<5} {len(view['patients'][split]):>4} patients {view['counts'][split]:>6} slices")
    echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return view
