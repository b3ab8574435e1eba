"""``make bench-load``: the supervised local stack under concurrent load, on 127.0.0.1.

1. **Ingestion at scale**: ``--scans`` (default 10,000) small, distinct NIfTI scans uploaded by
   ``--upload-clients`` (50) concurrent clients into one dataset. Reports scans/s and p50/p95 latency
   over the first and the last thousand uploads — flat when an upload's cost does not grow with the
   dataset — errors, the 429s and 503s waited out (every client retries as the shipped ones do, so a
   latency includes its waits), and whether the dataset's manifest holds exactly the scans accepted.
2. **Cohort burst**: ``--cohort-clients`` (20) clients, each submitting a cohort request and following
   it to its end before the next, for ``--cohort-seconds``, against a small generator trained first;
   reports POST and submit-to-end latency p50/p95, errors, and how many cohorts succeeded, failed
   or were still unfinished 15 minutes after the burst.

Writes ``results.json`` and ``results.md`` under ``--out``. Run it alone: it is a measurement.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from medsynth.bench import save_results
from medsynth.local.api_client import api_client, job_id_of, retried
from medsynth.local.ingest_client import UPLOAD_RETRY

BASE_PORT = 23700


def scan_bytes(i: int) -> tuple[bytes, bytes]:
    """A distinct 16×16×4 scan and its label map, gzipped NIfTI (about 2 KB each)."""
    import nibabel as nib

    rng = np.random.default_rng(i)
    image = rng.random((16, 16, 4), dtype=np.float32)
    label = (image > 0.7).astype(np.uint8)
    return (gzip.compress(nib.Nifti1Image(image, np.eye(4)).to_bytes(), 1),
            gzip.compress(nib.Nifti1Image(label, np.eye(4)).to_bytes(), 1))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan")}
    return {"p50_ms": float(np.percentile(values, 50) * 1000), "p95_ms": float(np.percentile(values, 95) * 1000)}


def ingest_phase(ingest_url: str, api_url: str, scans: int, clients: int, echo, keys: list[str], reader: str) -> dict[str, Any]:
    """``keys``: one uploader key per client thread (each a modality script of its own); ``reader``
    reads the dataset's summary afterwards."""
    latencies: list[tuple[int, float, float]] = [None] * scans  # (status, seconds, finished at)
    errors: dict[str, int] = {}
    lock = threading.Lock()
    local = threading.local()
    handed: list[str] = []
    clients_made: list[httpx.Client] = []
    began = time.monotonic()

    def upload(i: int) -> None:
        if getattr(local, "client", None) is None:
            with lock:
                token = keys[len(handed)]
                handed.append(token)
            local.client = api_client(api_key=token, retry=UPLOAD_RETRY)
            with lock:
                clients_made.append(local.client)
        client = local.client
        image, label = scan_bytes(i)
        t = time.monotonic()
        try:
            r = client.post(f"{ingest_url}/v1/datasets/load/scans", data={"patient_id": f"p{i:05d}"},
                            files={"image": ("s.nii.gz", image), "label": ("l.nii.gz", label)})
            status = r.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        latencies[i] = (status, time.monotonic() - t, time.monotonic() - began)
        if status != 201:
            with lock:
                errors[str(status)] = errors.get(str(status), 0) + 1
        if i % 1000 == 999:
            echo(f"  {i + 1} uploads sent, {time.monotonic() - began:.0f}s")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(upload, range(scans)))
    wall = time.monotonic() - began
    window = min(1000, scans // 2)

    def stats(part: list) -> dict[str, float]:
        ok = [s for st, s, _ in part if st == 201]
        span = max(f for *_, f in part) - min(f - s for _, s, f in part)
        return {"uploads": len(part), "scans_per_s": len(part) / span if span > 0 else float("nan"), **percentiles(ok)}

    first, last = sorted(latencies[:window], key=lambda r: r[2]), sorted(latencies[-window:], key=lambda r: r[2])
    accepted = sum(st == 201 for st, *_ in latencies)
    waited = sum((retried(c) for c in clients_made), Counter())
    for c in clients_made:
        c.close()
    with api_client(api_url, api_key=reader) as api:
        dataset = api.get("/v1/datasets/load").json()
    return {"scans": scans, "clients": clients, "wall_s": wall, "accepted": accepted, "errors": errors, "retried": dict(waited),
            "first_window": stats(first), "last_window": stats(last), "overall": percentiles([s for st, s, _ in latencies if st == 201]),
            "manifest_scans": dataset.get("scans"), "lost": accepted - int(dataset.get("scans") or 0)}


def cohort_phase(api_url: str, generator_id: str, clients: int, seconds: float, echo, keys: list[str]) -> dict[str, Any]:
    """Closed loop: each client submits a cohort and follows it to its end before the next, so that
    ``clients`` cohort requests are in flight at once for ``seconds``."""
    posts, ends, errors, outcomes, lost = [], [], {}, {}, []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def note(table: dict, key: str) -> None:
        with lock:
            table[key] = table.get(key, 0) + 1

    def client(k: int) -> None:
        with api_client(api_url, api_key=keys[k], timeout=60) as api:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                t = time.monotonic()
                try:
                    r = api.post("/v1/cohorts", json={"generator_id": generator_id, "count": 8, "seed": k * 10_000 + n})
                except httpx.HTTPError as exc:
                    note(errors, type(exc).__name__)
                    continue
                if (job_id := job_id_of(r)) is None:  # a 503 that recorded the job is followed, not resubmitted
                    note(errors, str(r.status_code))
                    continue
                posted = time.monotonic()
                with lock:
                    posts.append(posted - t)
                state = "queued"
                while state not in ("succeeded", "failed", "cancelled") and time.monotonic() < stop_at + 900:
                    time.sleep(0.25)
                    try:
                        state = api.get(f"/v1/jobs/{job_id}").json()["state"]
                    except httpx.HTTPError:
                        continue
                if state in ("succeeded", "failed", "cancelled"):
                    note(outcomes, state)
                    with lock:
                        ends.append(time.monotonic() - t)
                else:
                    with lock:
                        lost.append(job_id)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requested = len(posts)
    echo(f"  {requested} cohorts requested and followed to their end")
    return {"clients": clients, "seconds": seconds, "requested": requested, "errors": errors, "post": percentiles(posts),
            "end_to_end": percentiles(ends), "outcomes": outcomes, "unfinished": len(lost)}


def submit(api: httpx.Client, path: str, body: dict) -> str:
    from medsynth.local.demo import submit_job

    return submit_job(api, path, body, path, echo=lambda *_: None)


def main(argv: list[str] | None = None) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.local import stack

    parser = argparse.ArgumentParser(prog="python -m medsynth.bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--upload-clients", type=int, default=50)
    parser.add_argument("--cohort-clients", type=int, default=20)
    parser.add_argument("--cohort-seconds", type=float, default=60.0)
    parser.add_argument("--out", default="bench-results/load")
    args = parser.parse_args(argv)
    echo = lambda *a: print(*a, flush=True)  # noqa: E731
    home = Path(tempfile.mkdtemp(prefix="medsynth-bench-load-"))
    os.environ.update(MEDSYNTH_HOME=str(home), MEDSYNTH_STACK_BASE_PORT=str(BASE_PORT))
    settings = load_settings()
    api_url, ingest_url = f"http://127.0.0.1:{BASE_PORT}", f"http://127.0.0.1:{BASE_PORT + 1}"
    echo(f"== starting the stack in {home}")
    stack.up(settings, echo=echo)
    try:
        echo(f"== ingestion: {args.scans} scans, {args.upload_clients} concurrent clients")
        uploaders = [stack.issue_key(settings, "uploader", name=f"bench client {i}") for i in range(args.upload_clients)]
        reader = stack.issue_key(settings, "viewer", name="bench reader")
        ingest = ingest_phase(ingest_url, api_url, args.scans, args.upload_clients, echo, uploaders, reader)
        echo("== a small generator for the cohort burst")
        from medsynth.local.demo import wait_for_job

        researchers = [stack.issue_key(settings, "researcher", name=f"bench client {i}") for i in range(args.cohort_clients + 1)]
        with api_client(api_url, api_key=researchers[-1]) as api:
            view = wait_for_job(api, submit(api, "/v1/datasets/load/views", {"size": 32}), echo=lambda *_: None)
            body = {"dataset": "load", "view_id": view["result_keys"]["view"].split("/")[-2],
                    "generator": {"family": "joint-gan", "latent_dim": 16, "base_channels": 8}, "training": {"steps": 20, "batch_size": 8}}
            generator = wait_for_job(api, submit(api, "/v1/generators", body), echo=lambda *_: None)
        echo(f"== cohort burst: {args.cohort_clients} clients for {args.cohort_seconds:.0f}s")
        cohorts = cohort_phase(api_url, generator["job_id"], args.cohort_clients, args.cohort_seconds, echo, researchers)
    finally:
        stack.down(settings, echo=lambda *_: None)
    results = {"ingest": ingest, "cohorts": cohorts, "cpu_count": os.cpu_count()}
    save_results(args.out, results, table(results))
    echo(table(results))
    return 0 if ingest["lost"] == 0 else 1


def table(r: dict[str, Any]) -> str:
    i, c = r["ingest"], r["cohorts"]
    f, l = i["first_window"], i["last_window"]
    return "\n".join([
        f"# make bench-load ({r['cpu_count']} CPU cores, 127.0.0.1)",
        "",
        f"Ingestion: {i['scans']} scans by {i['clients']} clients in {i['wall_s']:.0f} s; accepted {i['accepted']}, errors {i['errors'] or 0}, "
        f"waited out and resent {i.get('retried') or 0}, "
        f"manifest holds {i['manifest_scans']}, lost {i['lost']}",
        "",
        "| uploads | scans/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
        f"| first {f['uploads']} | {f['scans_per_s']:.1f} | {f['p50_ms']:.0f} | {f['p95_ms']:.0f} |",
        f"| last {l['uploads']} | {l['scans_per_s']:.1f} | {l['p50_ms']:.0f} | {l['p95_ms']:.0f} |",
        "",
        f"Cohort burst: {c['clients']} clients for {c['seconds']:.0f} s, each following its cohort (8 samples) to its end: "
        f"{c['requested']} requested, POST p50 {c['post']['p50_ms']:.0f} ms, p95 {c['post']['p95_ms']:.0f} ms; submit-to-end "
        f"p50 {c['end_to_end']['p50_ms'] / 1000:.1f} s, p95 {c['end_to_end']['p95_ms'] / 1000:.1f} s; errors {c['errors'] or 0}; "
        f"outcomes {c['outcomes']}, still queued or running 15 min after the burst {c['unfinished']}",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
