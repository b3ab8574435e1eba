"""`medsynth demo`: the main job end to end on one machine, through the real services.

Starts the local stack, ingests phantom scans (or a Decathlon folder given with ``--data``) through
the ingest service, then through the api (every hop a job over Kafka): prepare views split by patient
→ train a generator → sample a cohort through TorchServe → train segmenters on real, synthetic and
mixed data → evaluate. Prints the report path and the headline numbers, and stops the stack.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. Defaults fit 15 minutes on 2 CPU cores; scale them up on a GPU (see README)."""

    phantoms: int = 16
    size: int = 64
    gan_steps: int = 2000
    gan_base_channels: int = 16
    gan_batch_size: int = 32
    cohort_size: int = 512
    seg_steps: int = 800
    seg_batch_size: int = 16


def _submit(api: httpx.Client, path: str, body: dict, label: str, timings: dict, echo) -> dict:
    echo(f"== {label}")
    t = time.monotonic()
    response = api.post(path, json=body)
    if response.status_code >= 400:
        raise MedsynthError(f"{label}: HTTP {response.status_code}: {response.text}")
    job = wait_for_job(api, response.json()["job_id"], echo=echo)
    timings[label] = time.monotonic() - t
    return job


def run_pipeline(api: httpx.Client, dataset: str, knobs: DemoSettings, timings: dict, echo=print) -> dict:
    """prepare → train generator → cohort → segment ×3 → evaluate, all through the REST api."""
    job = _submit(api, f"/v1/datasets/{dataset}/views", {"size": knobs.size}, "prepare views", timings, echo)
    view_id = job["result_keys"]["view"].split("/")[-2]
    gen = _submit(api, "/v1/generators", {
        "dataset": dataset, "view_id": view_id, "steps": knobs.gan_steps, "base_channels": knobs.gan_base_channels,
        "batch_size": knobs.gan_batch_size, "checkpoint_every": max(1, knobs.gan_steps // 4),
        "loss": "bce",  # of the three, the one that pairs images and masks soonest in short runs
    }, "train generator", timings, echo)
    cohort = _submit(api, "/v1/cohorts", {"generator_id": gen["job_id"], "count": knobs.cohort_size, "seed": 1},
                     "sample cohort", timings, echo)
    runs = {}
    for source in ("real", "synthetic", "mixed"):
        body = {"dataset": dataset, "view_id": view_id, "source": source, "steps": knobs.seg_steps,
                "batch_size": knobs.seg_batch_size, "augment": source == "real"}
        if source != "real":
            body["cohort_id"] = cohort["job_id"]
        runs[source] = _submit(api, "/v1/segmentations", body, f"segment ({source})", timings, echo)["job_id"]
    evaluation = _submit(api, "/v1/evaluations", {"cohort_id": cohort["job_id"], "segmentation_run_ids": list(runs.values())},
                         "evaluate", timings, echo)
    return api.get(f"/v1/evaluations/{evaluation['job_id']}").raise_for_status().json()["report"] | {"evaluation_job": evaluation}


def run_demo(settings: Settings, data: Path | None, *, dataset: str = "demo", knobs: DemoSettings = DemoSettings(), echo=print) -> dict:
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
                write_phantom_dataset(data, n=knobs.phantoms, seed=0)
                echo(f"== wrote {knobs.phantoms} phantom scans to {data}")
            t = time.monotonic()
            echo(f"== ingesting {data} into dataset {dataset!r}")
            summary = ingest_folder(data, dataset, f"http://127.0.0.1:{settings.stack_base_port + 1}")
            echo("\n".join(summary.lines()))
            timings["ingest"] = time.monotonic() - t
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.stack_base_port}", timeout=120) as api:
            report = run_pipeline(api, dataset, knobs, timings, echo)
    finally:
        echo("== stopping the stack")
        stack.down(settings, echo=echo)
    report_path = settings.local_store_root.resolve() / report["evaluation_job"]["result_keys"]["report_html"]
    echo(headline(report))
    echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    echo(f"report: {report_path}")
    return report | {"timings": timings, "report_path": str(report_path)}


def headline(report: dict) -> str:
    lines = ["== headline numbers"]
    for row in report.get("fidelity", []):
        lines.append(f"  {row['metric']:<4} {row['value']:.4g}  ({row['extractor']}, {row['preprocessing']}, n={row['n_real']}/{row['n_fake']})")
    for row in report.get("utility", []):
        lines.append(f"  Dice {row['source']:<9} {row['mean_dice']:.3f} [{row['dice_ci_low']:.3f}, {row['dice_ci_high']:.3f}]  HD95 {row['mean_hd95']:.2f}")
    lines.append(f"  relative Dice (synthetic/real) {report.get('relative_dice', float('nan')):.3f}")
    mem = report.get("memorization", {})
    lines.append(f"  memorization: {mem.get('fraction_flagged', float('nan')):.3%} of samples flagged as near-copies")
    return "\n".join(lines)
