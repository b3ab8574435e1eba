"""``make bench-study``: what running a study costs beyond its jobs, on the supervised local stack.

Starts the stack, ingests phantoms, prepares a view, then runs a study of tiny jobs (a few steps
each, so that scheduling shows) and measures, per job:

- **scheduling delay**: from the moment its last input finished (or the study was created, for jobs
  with no input) to the job's record being created, i.e. the study loop noticing and submitting it
  (bounded by ``MEDSYNTH_STUDY_EVERY_S``, 5 s by default);
- **queue delay**: from the job's creation to a worker starting it (Kafka and worker availability);

and for the whole study: the wall time beside the critical path of job run times, and the time to
create the study (planning, checks, the first submissions). A second identical study then measures
reuse: every job adopted, none run. Writes ``results.json`` and ``results.md`` under ``--out``.

With ``--data`` (a Decathlon-layout folder) and ``--spec`` (a study spec, YAML, without ``dataset`` and
``view_id``, which the bench fills in), it runs that study on real data instead, printing progress arm
by arm, and also saves the study's own results (``study.json``, ``study.csv``, ``report.html`` and the
critical-difference diagram ``cd.svg``) under ``--out``. ``studies/hippocampus-msd.yaml`` beside this
module is the study of ``../shared/data/hippocampus-msd`` whose figures the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from medsynth.bench import save_results

BASE_PORT = 24700
SPECS = Path(__file__).parent / "studies"


def _t(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def measure(api: httpx.Client, study: dict[str, Any], created_at: float) -> dict[str, Any]:
    """Per job: scheduling delay (inputs done -> submitted) and queue delay (submitted -> started)."""
    from medsynth.studies.plan import expand
    from medsynth.studies.spec import StudyCreate

    nodes = expand(StudyCreate.from_record(study["spec"]))  # as the runner expands it (records from before keep their rules)
    jobs = {n["node"]: api.get(f"/v1/jobs/{n['job_id']}").json() for n in study["nodes"]}
    scheduling, queueing, rows = [], [], []
    for node_id, node in nodes.items():
        job = jobs[node_id]
        ready = max([_t(jobs[d]["finished_at"]) for d in node.needs()], default=created_at)
        submitted, started = _t(job["created_at"]), _t(job["started_at"])
        scheduling.append(submitted - ready)
        queueing.append(started - submitted)
        rows.append({"node": node_id, "kind": node.kind.value, "scheduling_s": submitted - ready, "queue_s": started - submitted,
                     "run_s": _t(job["finished_at"]) - started})
    return {"jobs": len(rows), "scheduling_s": _summary(scheduling), "queue_s": _summary(queueing), "rows": rows,
            "run_s_total": sum(r["run_s"] for r in rows)}


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)), "max": float(max(values))}


def run_study(api: httpx.Client, spec: dict[str, Any], echo) -> tuple[dict[str, Any], float, float]:
    began = time.time()
    r = api.post("/v1/studies", json=spec)
    if r.status_code != 202:
        raise SystemExit(f"POST /v1/studies: HTTP {r.status_code}: {r.text}")
    create_s = time.time() - began
    study = r.json()
    while study["state"] == "running":
        time.sleep(0.5)
        study = api.get(f"/v1/studies/{study['study_id']}").json()
    echo(f"  study {study['study_id']}: {study['state']} in {time.time() - began:.1f} s")
    return study, began, create_s


def main(argv: list[str] | None = None) -> int:
    from medsynth.core.settings import load_settings
    from medsynth.datasets.phantoms import write_phantom_dataset
    from medsynth.local import stack
    from medsynth.local.api_client import api_client
    from medsynth.local.demo import ingest_all, submit_job, wait_for_job
    from medsynth.local.ingest_client import patient_mapping

    parser = argparse.ArgumentParser(prog="python -m medsynth.bench.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", type=int, default=2, choices=range(1, 4), help="joint-gan, then spade, then stylegan2")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data", type=Path, help="Decathlon-layout folder (imagesTr/ + labelsTr/); default: phantoms and tiny jobs")
    parser.add_argument("--spec", type=Path, default=SPECS / "hippocampus-msd.yaml", help="with --data: the study to run")
    parser.add_argument("--size", type=int, default=64, help="with --data: the view's image size")
    parser.add_argument("--patients", type=Path,
                        help="with --data: case → patient map (case,patient_id), so that a patient's scans stay on one side of every "
                             "split; default DATA/patients.csv when there is one (hc18), else each case its own patient")
    parser.add_argument("--home", type=Path,
                        help="the stack's home (its store, broker log and job records), kept after the run: run the same spec "
                             "again with the same --home and every job that finished is reused, so a long study stopped part "
                             "way resumes where it was; default a new temporary folder")
    parser.add_argument("--out", type=Path, default=Path("bench-results/study"))
    args = parser.parse_args(argv)
    if args.data is not None and not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"--data {args.data}: no imagesTr/ folder there (../shared/data exists on the team's machines and in CI only)")
    if args.patients is None and args.data is not None and (args.data / "patients.csv").is_file():
        args.patients = args.data / "patients.csv"
    patient_of = patient_mapping(args.patients) if args.patients is not None else None
    echo = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.data is not None:
        # Several workers train at once here (generators beside segmenters beside evaluations): with torch's
        # default of one thread per core in each, two jobs on two cores ran ~10x slower each (threads
        # spinning against each other); one thread a process keeps each job at about half its solo speed.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    home = args.home.resolve() if args.home is not None else Path(tempfile.mkdtemp(prefix="medsynth-bench-study-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(MEDSYNTH_HOME=str(home), MEDSYNTH_STACK_BASE_PORT=str(BASE_PORT))
    settings = load_settings()
    echo(f"== starting the stack in {home}")
    stack.up(settings, echo=echo)
    try:
        uploader, researcher = stack.issue_key(settings, "uploader"), stack.issue_key(settings, "researcher")
        if args.data is None:
            write_phantom_dataset(home / "phantoms", n=8, seed=0, shape=(24, 24, 10))
        ingest_all(args.data or home / "phantoms", "bench", f"http://127.0.0.1:{BASE_PORT + 1}", uploader, echo, patient_of=patient_of)
        with api_client(f"http://127.0.0.1:{BASE_PORT}", api_key=researcher) as api:
            view_request = {"size": 32, "val_fraction": 0.2, "test_fraction": 0.2} if args.data is None else {"size": args.size, "seed": 0}
            view = wait_for_job(api, submit_job(api, "/v1/datasets/bench/views", view_request, "prepare views", echo),
                                timeout=3600, echo=lambda *_: None)
            view_id = view["result_keys"]["view"].split("/")[-2]
            if args.data is not None:
                return _real_study(api, args, view_id, settings, echo)
            tiny = {"joint-gan": {"family": "joint-gan", "latent_dim": 16, "base_channels": 8},
                    "spade": {"family": "spade", "latent_dim": 16, "base_channels": 8, "spade_hidden": 8, "disc_channels": 8, "num_scales": 1,
                              "mask_latent_dim": 16, "mask_base_channels": 4, "mask_bank_size": 16},
                    "stylegan2": {"family": "stylegan2", "latent_dim": 16, "style_dim": 16, "mapping_layers": 2, "channel_base": 256,
                                  "channel_max": 16, "mbstd_group": 2}}
            spec = {"dataset": "bench", "view_id": view_id, "seeds": list(range(args.seeds)),
                    "cohort_size": 16, "max_eval_samples": 32,
                    "families": [{"generator": g, "training": {"steps": 2, "batch_size": 8}} for g in list(tiny.values())[:args.families]],
                    "arms": {"synthetic": True, "ratios": [0.5], "augmentation": [False]},
                    "segmentation": {"models": ["unet"], "steps": 2, "batch_size": 8}}
            echo("== a study of tiny jobs")
            study, began, create_s = run_study(api, spec, echo)
            wall_s = _t(study["finished_at"]) - began
            first = measure(api, study, began)
            echo("== the same study again (every job reused)")
            again, began2, create2_s = run_study(api, spec, echo)
            reused = sum(n["reused"] for n in again["nodes"])
    finally:
        stack.down(settings, echo=lambda *_: None)
    results = {"state": study["state"], "jobs": first["jobs"], "create_s": create_s, "wall_s": wall_s, "run_s_total": first["run_s_total"],
               "scheduling_s": first["scheduling_s"], "queue_s": first["queue_s"], "study_every_s": settings.study_every_s,
               "again": {"state": again["state"], "reused": reused, "of": len(again["nodes"]), "create_s": create2_s,
                         "wall_s": _t(again["finished_at"]) - began2},
               "rows": first["rows"], "cpu_count": os.cpu_count()}
    save_results(args.out, results, table(results))
    echo(table(results))
    return 0 if study["state"] == "succeeded" and reused == len(again["nodes"]) else 1


def _real_study(api: httpx.Client, args: argparse.Namespace, view_id: str, settings, echo) -> int:
    """The spec's study on the ingested data: progress arm by arm, then its results beside the scheduling figures."""
    from medsynth.local.study_client import read_spec, run_study as follow, save_results as save_study
    from medsynth.metrics.statistics import cd_diagram_svg

    spec = {**read_spec(args.spec), "dataset": "bench", "view_id": view_id}
    echo(f"== the study {args.spec.name} on {args.data} (view {view_id})")
    began = time.time()
    study = follow(api, spec, poll_s=10, echo=echo)
    save_study(api, study, args.out)
    for name in ("results.json", "results.csv"):  # the bench's own results.json/md take the plain names
        if (args.out / name).exists():
            (args.out / name).rename(args.out / name.replace("results", "study"))
    friedman = json.loads((args.out / "study.json").read_text()).get("friedman", {})  # as saved just now
    if "critical_difference" in friedman:
        (args.out / "cd.svg").write_text(cd_diagram_svg(friedman))
    timing = measure(api, study, began)
    results = {"state": study["state"], "study_id": study["study_id"], "spec": spec, "data": str(args.data), "jobs": timing["jobs"],
               "wall_s": _t(study["finished_at"]) - began, "run_s_total": timing["run_s_total"], "scheduling_s": timing["scheduling_s"],
               "queue_s": timing["queue_s"], "study_every_s": settings.study_every_s, "rows": timing["rows"], "cpu_count": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    markdown = study_table(results, args.spec.name, args.out)
    save_results(args.out, results, markdown)
    echo(markdown)
    return 0 if study["state"] == "succeeded" else 1


def study_table(r: dict[str, Any], spec_name: str, out: Path) -> str:
    s = r["scheduling_s"]
    files = sorted(p.name for p in out.iterdir() if p.name.startswith(("study.", "report.", "cd.")))
    return "\n".join([
        f"# bench-study — {spec_name} on {r['data']}: {r['jobs']} jobs, {r['cpu_count']} CPUs, OMP_NUM_THREADS={r['omp_num_threads']}", "",
        f"study {r['state']} after {r['wall_s'] / 60:.1f} min; its jobs ran {r['run_s_total'] / 60:.1f} min in all; "
        f"scheduling delay p50 {s['p50']:.2f} s / p95 {s['p95']:.2f} s.",
        f"The study's own files here: {', '.join(files)}.", ""])


def table(r: dict[str, Any]) -> str:
    s, q, a = r["scheduling_s"], r["queue_s"], r["again"]
    return "\n".join([
        f"# bench-study — {r['jobs']} tiny jobs, study loop every {r['study_every_s']:g} s, {r['cpu_count']} CPUs", "",
        "| measure | p50 | p95 | max |", "|---|---|---|---|",
        f"| scheduling delay (inputs done → job submitted), s | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} |",
        f"| queue delay (submitted → started by a worker), s | {q['p50']:.2f} | {q['p95']:.2f} | {q['max']:.2f} |", "",
        f"study {r['state']}: created in {r['create_s']:.2f} s, ended after {r['wall_s']:.1f} s; its jobs ran {r['run_s_total']:.1f} s in all.",
        f"the same study again: {a['state']}, {a['reused']} of {a['of']} jobs reused, created in {a['create_s']:.2f} s, "
        f"ended after {a['wall_s']:.1f} s.", ""])


if __name__ == "__main__":
    sys.exit(main())
