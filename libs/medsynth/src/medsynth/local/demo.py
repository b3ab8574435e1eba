"""`medsynth demo`: the main job end to end on one machine, through the real services.

Starts the local stack, ingests phantom scans (or a Decathlon folder given with ``--data``) through
the ingest service, then through the api (every hop a job over Kafka): prepare views split by patient
→ train a generator → sample a cohort through TorchServe → train segmenters on real, synthetic and
mixed data → evaluate. Prints the report path, the headline numbers, where the cohort is and the
command that downloads it again, and stops the stack.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import httpx

from medsynth.core.errors import MedsynthError
from medsynth.generators.presets import preset
from medsynth.core.names import check_name
from medsynth.core.settings import Settings, StoreBackend
from medsynth.local.api_client import api_client, job_id_of
from medsynth.local.ingest_client import PatientOf, Summary, ingest_folder


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    *,
    timeout: float = 1800,
    echo=print,
    tty: bool | None = None,
    poll_s: float = 0.5,
) -> dict:
    """Poll a job until it is terminal, showing its progress; raise if it did not succeed.

    On a terminal (``tty``, default: whether stdout is one) a tqdm bar is redrawn in place. Otherwise
    (a log file, CI, a pipe) ``echo`` gets one line per change of state or stage (the job's message
    with its numbers ignored, e.g. "fidelity" → "memorization audit") and per 10 % of progress, so
    a long job writes a few dozen lines, not one per poll.
    """
    if tty is None:
        tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    show = _BarProgress(job_id) if tty else _LineProgress(job_id, echo)
    try:
        while True:
            job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            show(job)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise MedsynthError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(poll_s)
    finally:
        show.close()
    if job["state"] != "succeeded":
        raise MedsynthError(f"job {job_id} {job['state']}: {job['error']}")
    return job


class _BarProgress:
    """A tqdm bar redrawn in place (terminals)."""

    def __init__(self, job_id: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit="%", desc=job_id, bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix}")

    def __call__(self, job: dict) -> None:
        self.bar.n = round(job["progress"] * 100)
        self.bar.set_postfix_str(f"{job['state']} {job['message']}")

    def close(self) -> None:
        self.bar.close()


class _LineProgress:
    """One line per change of state, of stage, or of a 10 % step of progress (logs and pipes)."""

    def __init__(self, job_id: str, echo) -> None:
        self.job_id, self.echo = job_id, echo
        self.started = time.monotonic()
        self.last: tuple[str, str, int] | None = None

    def __call__(self, job: dict) -> None:
        progress = float(job.get("progress") or 0.0)
        message = job.get("message") or ""
        key = (job["state"], _stage(message), min(int(progress * 10 + 1e-9), 10))
        if key != self.last:
            self.last = key
            elapsed = time.monotonic() - self.started
            text = f" {message}" if message else ""
            self.echo(f"  {self.job_id}: {job['state']} {progress:.0%}{text} [{elapsed:.0f}s]")

    def close(self) -> None:
        pass


def _stage(message: str) -> str:
    """A job message without its numbers: "step 40/800: val Dice 0.61" and "step 80/800: val Dice
    0.66" are one stage, "testing on held-out real patients" another."""
    return re.sub(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?%?", "#", message)


# The best relative Dice in `make bench-generators` on hippocampus at 8 minutes per family (README).
DEFAULT_FAMILY = "spade"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. Defaults fit 15 minutes on 2 CPU cores; scale them up on a GPU (see README)."""

    phantoms: int = 16
    size: int = 64
    family: str = DEFAULT_FAMILY  # options: medsynth.generators.presets
    gen_minutes: float = 8.0      # the generator's training time budget
    gen_steps: int = 100_000      # ... and its step limit, whichever comes first
    mask_source: str = ""         # the cohort's; empty: the preset's (the one that scored best)
    cohort_size: int = 512
    seg_steps: int = 800
    seg_batch_size: int = 16


def submit_job(api: httpx.Client, path: str, body: dict, label: str, echo=print) -> str:
    """POST a job request once; its job id. A 503 that recorded the job (the broker was down) is not
    resubmitted: the job is followed, and the reconciler publishes it when the broker is back."""
    response = api.post(path, json=body)
    job_id = job_id_of(response)
    if job_id is None:
        raise MedsynthError(f"{label}: HTTP {response.status_code}: {response.text}")
    if response.status_code == 503:
        echo(f"  {job_id}: recorded, the broker is unreachable for now; following it (not resubmitting)")
    return job_id


def _submit(api: httpx.Client, path: str, body: dict, label: str, timings: dict, echo) -> dict:
    echo(f"== {label}")
    t = time.monotonic()
    job = wait_for_job(api, submit_job(api, path, body, label, echo), echo=echo)
    timings[label] = time.monotonic() - t
    return job


def run_pipeline(api: httpx.Client, dataset: str, knobs: DemoSettings, timings: dict, echo=print) -> dict:
    """prepare → train generator → cohort → segment ×3 → evaluate, all through the REST api."""
    job = _submit(api, f"/v1/datasets/{dataset}/views", {"size": knobs.size}, "prepare views", timings, echo)
    view_id = job["result_keys"]["view"].split("/")[-2]
    chosen = preset(knobs.family)
    training = {**chosen["training"], "steps": knobs.gen_steps, "time_budget_s": knobs.gen_minutes * 60,
                "checkpoint_every": 250, "log_every": max(1, min(25, knobs.gen_steps // 10))}
    gen = _submit(api, "/v1/generators", {"dataset": dataset, "view_id": view_id, "generator": chosen["generator"],
                                          "training": training}, f"train generator ({knobs.family})", timings, echo)
    mask_source = knobs.mask_source or chosen["cohort"]["mask_source"]
    cohort = _submit(api, "/v1/cohorts", {"generator_id": gen["job_id"], "count": knobs.cohort_size, "seed": 1,
                                          "mask_source": mask_source}, f"sample cohort ({mask_source} masks)", timings, echo)
    runs = {}
    for source in ("real", "synthetic", "mixed"):
        body = {"dataset": dataset, "view_id": view_id, "source": source, "steps": knobs.seg_steps,
                "batch_size": knobs.seg_batch_size, "augment": source == "real"}
        if source != "real":
            body["cohort_id"] = cohort["job_id"]
        runs[source] = _submit(api, "/v1/segmentations", body, f"segment ({source})", timings, echo)["job_id"]
    evaluation = _submit(api, "/v1/evaluations", {"cohort_id": cohort["job_id"], "segmentation_run_ids": list(runs.values())},
                         "evaluate", timings, echo)
    report = api.get(f"/v1/evaluations/{evaluation['job_id']}").raise_for_status().json()["report"]
    return report | {"evaluation_job": evaluation, "cohort_job": cohort}


PHANTOM_DATASET = "phantoms"


def dataset_name(data: Path | None, dataset: str | None = None) -> str:
    """The dataset the demo ingests into: ``dataset`` if given (it must be a valid name, see
    :func:`medsynth.core.names.check_name`), else the data folder's name made valid by
    :func:`sanitise_name`, else ``"phantoms"`` for the generated phantom scans."""
    if dataset is not None:
        return check_name(dataset, "dataset name")
    if data is None:
        return PHANTOM_DATASET
    return sanitise_name(Path(data).resolve().name)


def sanitise_name(raw: str, *, fallback: str = "dataset") -> str:
    """``raw`` as a valid dataset name: accents dropped (NFKD → ASCII), every run of other characters
    than letters, digits, ``.``, ``_``, ``-`` replaced by ``-``, dot runs collapsed to one, leading
    and trailing punctuation stripped, cut to 64 characters; ``fallback`` if nothing is left."""
    ascii_only = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_only)
    name = re.sub(r"\.{2,}", ".", name).strip("._-")[:64].rstrip("._-")
    return check_name(name or fallback, "dataset name")


MISSING_NAMED = 20  # cases an incomplete ingestion names in its error


def ingest_all(data: Path, dataset: str, url: str, api_key: str, echo=print, *, patient_of: PatientOf | None = None) -> Summary:
    """Upload the folder (cases mapped to patients by ``patient_of``, default each case its own); raise,
    naming the cases, unless every case is in the dataset (accepted now or already present): the demo
    never goes on with part of the user's data."""
    summary = ingest_folder(data, dataset, url, api_key=api_key, patient_of=patient_of)
    echo("\n".join(summary.lines()))
    if not summary.complete:
        missing = sorted(summary.missing())
        named = ", ".join(missing[:MISSING_NAMED]) + (f" and {len(missing) - MISSING_NAMED} more" if len(missing) > MISSING_NAMED else "")
        total = len(summary.accepted) + len(summary.duplicates) + len(missing)
        raise MedsynthError(f"{len(missing)} of {total} cases of {data} did not get into dataset {dataset!r}: {named} "
                            "(reasons above); the demo does not go on with part of the data")
    return summary


def run_demo(settings: Settings, data: Path | None, *, dataset: str | None = None, knobs: DemoSettings = DemoSettings(), echo=print) -> dict:
    """Run the demo end to end; ``dataset`` defaults to :func:`dataset_name` of ``data``."""
    from medsynth.local import stack
    from medsynth.datasets.phantoms import write_phantom_dataset

    dataset = dataset_name(data, dataset)  # before starting anything: a bad --dataset fails at once
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
            uploader = stack.issue_key(settings, "uploader", name="demo ingest")
            ingest_all(data, dataset, f"http://127.0.0.1:{settings.stack_base_port + 1}", uploader, echo)
            timings["ingest"] = time.monotonic() - t
        researcher = stack.issue_key(settings, "researcher", name="demo pipeline")
        with api_client(f"http://127.0.0.1:{settings.stack_base_port}", api_key=researcher) as api:
            report = run_pipeline(api, dataset, knobs, timings, echo)
    finally:
        echo("== stopping the stack")
        stack.down(settings, echo=echo)
    report_path = settings.local_store_root.resolve() / report["evaluation_job"]["result_keys"]["report_html"]
    echo(headline(report))
    echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    echo(f"report: {report_path}")
    for line in cohort_lines(report["cohort_job"], settings):
        echo(line)
    return report | {"timings": timings, "report_path": str(report_path)}


def cohort_lines(cohort: dict, settings: Settings) -> list[str]:
    """Where the demo's cohort is (its folder in the stack's store) and the commands that download it
    again once the stack is up (the demo stops it)."""
    folder = cohort["result_keys"]["manifest"].rsplit("/", 1)[0] + "/"
    where = (f"s3://{settings.s3_bucket}/{folder}" if settings.store is StoreBackend.s3
             else f"{settings.local_store_root.resolve() / folder}/")
    cohort_id = cohort["job_id"]
    return [f"cohort: {cohort_id} ({cohort['spec'].get('count', '?')} samples) in {where}",
            "download it again (a zip of images, masks and manifest): start the stack and set a researcher key, then",
            "  medsynth stack up",
            "  export MEDSYNTH_API_KEY=$(medsynth keys create --project default --role researcher --name download)",
            f"  medsynth cohorts download {cohort_id}    # writes ./{cohort_id}.zip"]


def headline(report: dict) -> str:
    """The report's main numbers as a few lines: each fidelity score beside its real-versus-real
    baseline and the counts, the diversity ratios (and a mode-collapse warning), Dice per source
    with its CI and per class, HD95 with its unit, relative Dice, the release gate's counts and the memorization fraction."""
    lines = ["== headline numbers"]
    for row in report.get("fidelity", []):
        line = f"  {row['metric']:<4} {row['value']:.4g} (n={row['n_real']} real / {row['n_fake']} synthetic)"
        if row.get("real_baseline") is not None and "baseline_n" in row:
            line += (f"; real-vs-real baseline {row['real_baseline']:.4g} (held-out vs training, n={row['baseline_n']} a side) "
                     f"vs synthetic {row['value_at_baseline_counts']:.4g} at the same n")
        elif row.get("real_baseline") is not None:  # a report from before held-out baselines: two halves of the training data
            line += (f"; real-vs-real baseline {row['real_baseline']:.4g} (n={row['baseline_n_a']}/{row['baseline_n_b']}, "
                     f"{row['baseline_split']}) vs synthetic {row['value_at_baseline_counts']:.4g} at the same counts")
        elif row.get("baseline_missing"):
            line += f"; {row['baseline_missing']}"
        lines.append(f"{line}  [{row['extractor']}; {row['preprocessing']}]")
    diversity = report.get("diversity") or {}
    ratios = [f"{space} {d['ratio']:.3g}" for space in ("pixel", "feature") if (d := diversity.get(space))]
    if ratios:
        lines.append(f"  diversity (synthetic/real mean pairwise distance): {', '.join(ratios)}; collapse below {diversity['threshold']:g}")
    if diversity.get("warning"):
        lines.append(f"  WARNING: {diversity['warning']}")
    for row in report.get("utility", []):
        unit = row.get("hd95_unit", "px")
        per_class = ", ".join(f"{c}: {_num(s.get('mean'), '.3f')}" for c, s in (row.get("dice_per_class") or {}).items())
        lines.append(f"  Dice {row['source']:<9} {_num(row['mean_dice'], '.3f')} [{_num(row['dice_ci_low'], '.3f')}, "
                     f"{_num(row['dice_ci_high'], '.3f')}]  per class {per_class or '-'}  HD95 {_num(row['mean_hd95'], '.2f')} {unit}")
    lines.append(f"  relative Dice (synthetic/real) {_num(report.get('relative_dice'), '.3f')}")
    release = report.get("release")
    if release:
        lines.append(f"  release gate ({release['policy']}): {release['flagged']} of {release['draws']} draws flagged as near-copies "
                     f"of training images, {len(release['withheld'])} withheld, {release['released_flagged']} released flagged")
    mem = report.get("memorization", {})
    lines.append(f"  memorization audit of the released cohort: {mem.get('fraction_flagged', float('nan')):.3%} of samples flagged as near-copies")
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    return "nan" if value is None else format(float(value), spec)
