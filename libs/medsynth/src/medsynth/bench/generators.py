"""``make bench-generators``: every generator family trained under the same wall-clock budget on one
dataset, then judged the same way — all through the running stack (REST → Kafka → workers →
TorchServe), as a user would.

Per family (and per mask source, for families with several): train with ``time_budget_s`` → a cohort
through TorchServe → a synthetic-only and a mixed U-Net → an evaluation (FID/KID with the extractor
named, memorization audit) against one real-only U-Net trained once. Sampling speed is measured
beside it, through TorchServe and in this process, on the same generator. Writes ``results.json``
and ``results.md`` (one table) under ``--out``.

Run it alone: it is meant to measure, and anything heavy beside it on the machine changes the steps
each family reaches in its budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from medsynth.core.errors import MedsynthError
from medsynth.generators.presets import PRESETS, preset

if TYPE_CHECKING:  # the entry module imports torch; the bench's command line does not need it
    from medsynth.generators.entry import GeneratorEntry

SPEED_STEPS = (10, 50, 250)  # denoising steps at which iterative samplers are timed

@dataclass(frozen=True)
class BenchSettings:
    data: Path | None = None          # Decathlon-layout folder; None: phantoms written by the bench
    dataset: str = "phantoms"
    families: tuple[str, ...] = ("joint-gan", "spade", "stylegan2")
    budget_min: float = 8.0           # training wall clock per family
    size: int = 64
    phantoms: int = 24
    cohort_size: int = 1000
    seg_steps: int = 800
    seg_batch_size: int = 16
    augment: bool = True              # classical augmentation, the same for every segmentation arm
    synthetic_ratio: float = 0.5
    sampling_probe: int = 256         # samples drawn to time sampling (TorchServe and in-process)
    iterative_probe: int = 16         # iterative samplers: samples drawn per step count in SPEED_STEPS
    seed: int = 0
    out: Path = Path("bench-results/generators")


@dataclass
class Row:
    family: str
    mask_source: str
    options: dict[str, Any]
    steps_done: int = 0
    steps_per_s: float = float("nan")
    train_s: float = float("nan")
    fid: float = float("nan")
    kid: float = float("nan")
    fid_real_baseline: float | None = None
    extractor: str = ""
    n_real: int = 0
    n_fake: int = 0
    dice_real: float = float("nan")
    dice_synthetic: float = float("nan")
    dice_synthetic_ci: tuple[float, float] = (float("nan"), float("nan"))
    dice_mixed: float = float("nan")
    dice_mixed_ci: tuple[float, float] = (float("nan"), float("nan"))
    relative_dice: float = float("nan")
    memorized_fraction: float = float("nan")
    mode_collapse_warning: str | None = None
    torchserve_images_per_s: float = float("nan")
    inprocess_images_per_s: float = float("nan")
    seconds_per_sample: dict[str, dict[str, float]] = field(default_factory=dict)  # iterative: steps → backend → s
    gate_draws: int = 0
    gate_flagged: int = 0
    real_masks_at_sampling: bool = False
    error: str | None = None
    ids: dict[str, str] = field(default_factory=dict)


def run(settings: BenchSettings, echo=print, included: dict[str, Any] | None = None) -> dict[str, Any]:
    from medsynth.local import stack
    from medsynth.core.settings import load_settings
    from medsynth.local.api_client import api_client
    from medsynth.local.demo import ingest_all
    from medsynth.datasets.phantoms import write_phantom_dataset

    app = load_settings()
    settings.out.mkdir(parents=True, exist_ok=True)
    echo(f"== bench-generators: families {list(settings.families)}, {settings.budget_min:g} min each, data {settings.data or 'phantoms'}")
    stack.up(app, echo=echo)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = settings.data
            if data is None:
                data = Path(tmp) / "phantoms"
                write_phantom_dataset(data, n=settings.phantoms, seed=settings.seed)
            ingest_all(Path(data), settings.dataset, f"http://127.0.0.1:{app.stack_base_port + 1}",
                       stack.issue_key(app, "uploader", name="bench-generators"), echo)
        researcher = stack.issue_key(app, "researcher", name="bench-generators")
        with api_client(f"http://127.0.0.1:{app.stack_base_port}", api_key=researcher) as api:
            result = _bench(api, app, settings, echo)
    finally:
        stack.down(app, echo=echo)
    if included:
        result["included"] = included
    _write(settings.out, result)
    echo(markdown(result))
    echo(f"results: {settings.out.resolve() / 'results.md'} and results.json")
    return result


def _bench(api: httpx.Client, app, settings: BenchSettings, echo) -> dict[str, Any]:
    from medsynth.generators.entry import parse_entry  # imports torch: only once the bench runs
    from medsynth.local.demo import submit_job, wait_for_job

    def submit(path: str, body: dict, label: str) -> dict:
        echo(f"== {label}")
        return wait_for_job(api, submit_job(api, path, body, label, echo), timeout=6 * 3600, echo=echo)

    view = submit(f"/v1/datasets/{settings.dataset}/views", {"size": settings.size, "seed": settings.seed}, "prepare views")
    view_id = view["result_keys"]["view"].split("/")[-2]
    seg = {"dataset": settings.dataset, "view_id": view_id, "steps": settings.seg_steps, "batch_size": settings.seg_batch_size,
           "augment": settings.augment, "seed": settings.seed}
    real = submit("/v1/segmentations", {**seg, "source": "real"}, "segment (real)")
    rows: list[Row] = []
    for family in settings.families:
        chosen = preset(family)
        options = chosen["generator"]
        training = {**chosen["training"], "steps": 1_000_000, "time_budget_s": settings.budget_min * 60,
                    "seed": settings.seed, "checkpoint_every": 500, "log_every": 25}
        try:
            t = time.monotonic()
            gen = submit("/v1/generators", {"dataset": settings.dataset, "view_id": view_id, "generator": options, "training": training},
                         f"train {family} ({settings.budget_min:g} min)")
            train_s = time.monotonic() - t
            entry = parse_entry(api.get(f"/v1/generators/{gen['job_id']}").raise_for_status().json()["generator"], gen["job_id"])
        except MedsynthError as exc:
            rows.append(Row(family, "-", options, error=str(exc)))
            continue
        for source in (s.value for s in entry.mask_sources):
            row = Row(family, source, options, steps_done=entry.steps_done, train_s=train_s,
                      steps_per_s=entry.steps_done / max(train_s, 1e-9), real_masks_at_sampling=source != "generated")
            row.ids["generator"] = gen["job_id"]
            try:
                _judge(api, app, settings, submit, seg, real["job_id"], entry, source, row)
            except MedsynthError as exc:
                row.error = str(exc)
            rows.append(row)
    return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "view_id": view_id, "real_run": real["job_id"], "rows": [asdict(r) for r in rows]}


def _judge(api, app, settings: BenchSettings, submit, seg: dict, real_run: str, entry: GeneratorEntry, source: str, row: Row) -> None:
    cohort = submit("/v1/cohorts", {"generator_id": entry.generator_id, "count": settings.cohort_size,
                                    "seed": settings.seed + 1, "mask_source": source, "formats": ["nifti"]},
                    f"cohort {row.family}/{source}")
    row.ids["cohort"] = cohort["job_id"]
    release = api.get(f"/v1/cohorts/{cohort['job_id']}").raise_for_status().json()["manifest"]["release"]
    row.gate_draws, row.gate_flagged = int(release["draws"]), int(release["flagged"])
    row.torchserve_images_per_s, row.inprocess_images_per_s = _sampling_speed(app, settings, entry, source)
    if _iterative(entry):
        row.seconds_per_sample = _iterative_speed(app, settings, entry, source)
    runs = [real_run]
    for arm in ("synthetic", "mixed"):
        body = {**seg, "source": arm, "cohort_id": cohort["job_id"], "synthetic_ratio": settings.synthetic_ratio}
        runs.append(submit("/v1/segmentations", body, f"segment {row.family}/{source} ({arm})")["job_id"])
    evaluation = submit("/v1/evaluations", {"cohort_id": cohort["job_id"], "segmentation_run_ids": runs}, f"evaluate {row.family}/{source}")
    report = api.get(f"/v1/evaluations/{evaluation['job_id']}").raise_for_status().json()["report"]
    row.ids["evaluation"] = evaluation["job_id"]
    _read_report(report, row)


def _read_report(report: dict, row: Row) -> None:
    for score in report.get("fidelity", []):
        if score["metric"] in ("fid", "kid") and score["extractor"].startswith("in-domain"):
            setattr(row, score["metric"], float(score["value"]))
            row.extractor, row.n_real, row.n_fake = score["extractor"], int(score["n_real"]), int(score["n_fake"])
            if score["metric"] == "fid":
                baseline = score.get("real_baseline")
                row.fid_real_baseline = float(baseline["value"]) if isinstance(baseline, dict) else baseline
    for utility in report.get("utility", []):
        ci = (float(utility["dice_ci_low"]), float(utility["dice_ci_high"]))
        if utility["source"] == "real":
            row.dice_real = float(utility["mean_dice"])
        elif utility["source"] == "synthetic":
            row.dice_synthetic, row.dice_synthetic_ci = float(utility["mean_dice"]), ci
        elif utility["source"] == "mixed":
            row.dice_mixed, row.dice_mixed_ci = float(utility["mean_dice"]), ci
    row.relative_dice = float(report.get("relative_dice", float("nan")))
    row.memorized_fraction = float(report.get("memorization", {}).get("fraction_flagged", float("nan")))
    row.mode_collapse_warning = (report.get("diversity") or {}).get("warning")


def _sampling_speed(app, settings: BenchSettings, entry: GeneratorEntry, source: str) -> tuple[float, float]:
    """Images per second drawing ``sampling_probe`` samples (``iterative_probe`` for iterative
    samplers) in batches of 64 at the generator's own settings: through the stack's TorchServe (the
    cohort job registered the model) and in this process from the checkpoint."""
    count = settings.iterative_probe if _iterative(entry) else settings.sampling_probe
    served, local = _samplers(app, entry, source)
    return _rate(served, count), _rate(local, count)


def _iterative(entry: GeneratorEntry) -> bool:
    from medsynth.generators.registry import get_family

    return get_family(entry.family).iterative


def _iterative_speed(app, settings: BenchSettings, entry: GeneratorEntry, source: str) -> dict[str, dict[str, float]]:
    """Seconds per sample at each of SPEED_STEPS denoising steps, through TorchServe and in-process."""
    out: dict[str, dict[str, float]] = {}
    for steps in SPEED_STEPS:
        served, local = _samplers(app, entry, source, sample_steps=steps)
        n = settings.iterative_probe
        out[str(steps)] = {"torchserve": 1 / _rate(served, n, batch=n), "in-process": 1 / _rate(local, n, batch=n)}
    return out


def _samplers(app, entry: GeneratorEntry, source: str, sample_steps: int | None = None):
    from medsynth.core.devices import pick_device
    from medsynth.generators.base import MaskSource, SampleMode
    from medsynth.sampling.backends import InProcessSampler, TorchServeSampler
    from medsynth.sampling.torchserve import TorchServeClient
    from medsynth.store import open_store
    from medsynth.generators.checkpoint import load_checkpoint, load_sampling_nets

    mode = SampleMode(mask_source=MaskSource(source), sample_steps=sample_steps)
    urls = json.loads((app.home.resolve() / "torchserve" / "state.json").read_text())
    client = TorchServeClient(urls["inference_url"], urls["management_url"], timeout_s=app.sampler_request_s,
                              key_file=urls["key_file"])
    checkpoint = load_checkpoint(open_store(app).get_bytes(entry.checkpoint_key))
    device = pick_device(app.device)
    local = InProcessSampler(checkpoint.spec, load_sampling_nets(checkpoint, device=device), mode, device=device)
    return TorchServeSampler(client, entry.model_name, mode), local


def _rate(sampler, count: int, batch: int = 64) -> float:
    """Samples per second over ``count`` samples in batches of ``batch``, after one warm-up batch."""
    batch = min(batch, count)
    sampler.draw(0, range(batch))  # warm-up: first request loads the worker / allocates
    t = time.perf_counter()
    for start in range(0, count, batch):
        sampler.draw(1, range(start, min(start + batch, count)))
    return count / (time.perf_counter() - t)


# Output ----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# bench-generators — {s['data'] or 'phantoms'}, {s['budget_min']} min per family, {s['size']}², "
        f"cohort {s['cohort_size']}, U-Net {s['seg_steps']} steps (augment {s['augment']})",
        "",
        f"Real-only U-Net: mean foreground Dice {_fmt(next((r['dice_real'] for r in result['rows'] if not r['error']), None))} "
        "on the real test patients (the denominator of relative Dice).",
        "",
        "| family | masks at sampling | steps | steps/s | FID | KID | FID real-vs-real | Dice synthetic [95% CI] "
        "| Dice mixed [95% CI] | relative Dice | gate: flagged / draws | memorized after gate | mode collapse "
        "| img/s TorchServe | img/s in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    included = result.get("included") or {}
    for r in [*result["rows"], *({**row, "family": row["family"] + " *"} for row in included.get("rows", []))]:
        if r["error"]:
            lines.append(f"| {r['family']} | {r['mask_source']} | failed: {r['error'][:120]} |" + " |" * 12)
            continue
        lines.append(
            f"| {r['family']} | {r['mask_source']}{' (real)' if r['real_masks_at_sampling'] else ''} | {r['steps_done']} "
            f"| {_fmt(r['steps_per_s'], 2)} | {_fmt(r['fid'])} | {_fmt(r['kid'], 4)} | {_fmt(r['fid_real_baseline'])} "
            f"| {_fmt(r['dice_synthetic'])} [{_fmt(r['dice_synthetic_ci'][0])}, {_fmt(r['dice_synthetic_ci'][1])}] "
            f"| {_fmt(r['dice_mixed'])} [{_fmt(r['dice_mixed_ci'][0])}, {_fmt(r['dice_mixed_ci'][1])}] "
            f"| {_fmt(r['relative_dice'])} | {r.get('gate_flagged', '–')} / {r.get('gate_draws', '–')} "
            f"| {_fmt(r['memorized_fraction'] * 100, 1)} % "
            f"| {'warned' if r.get('mode_collapse_warning') else 'no'} "
            f"| {_fmt(r['torchserve_images_per_s'], 1)} | {_fmt(r['inprocess_images_per_s'], 1)} |"
        )
    extractors = sorted({r["extractor"] for r in result["rows"] if r["extractor"]})
    counts = sorted({(r["n_real"], r["n_fake"]) for r in result["rows"] if r["n_real"]})
    lines += ["", f"FID/KID extractor: {', '.join(extractors) or '–'}; samples (real, fake): {counts}.",
              "relative Dice = synthetic-only Dice / real-only Dice, both on the view's real test patients.",
              *([f"* rows from {included['from']} (same data and settings; relative Dice against its own real-only U-Net "
                 f"{included['real_run']})."] if included else []),
              "gate: the cohort's release gate (default policy filter) — draws flagged as near-copies of training images "
              "and withheld; memorized after gate: the evaluation's audit (in-domain features) of the released cohort."]
    timed = [r for r in result["rows"] if r.get("seconds_per_sample")]
    if timed:
        steps = list(timed[0]["seconds_per_sample"])
        lines += ["", "Seconds per sample of iterative samplers, by denoising steps (batches of "
                  f"{s.get('iterative_probe', '–')}):", "",
                  "| family | masks | " + " | ".join(f"{k} steps TorchServe | {k} steps in-process" for k in steps) + " |",
                  "|---|---|" + "---|---|" * len(steps)]
        for r in timed:
            cells = " | ".join(f"{_fmt(r['seconds_per_sample'][k]['torchserve'], 3)} | {_fmt(r['seconds_per_sample'][k]['in-process'], 3)}"
                               for k in steps)
            lines.append(f"| {r['family']} | {r['mask_source']} | {cells} |")
    return "\n".join(lines)


def _included(path: Path, settings: BenchSettings) -> dict[str, Any]:
    """The rows of an earlier run, after checking it measured the same thing."""
    earlier = json.loads(path.read_text())
    same = ("data", "budget_min", "size", "cohort_size", "seg_steps", "seg_batch_size", "augment", "synthetic_ratio", "seed")
    now = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    differ = [k for k in same if earlier["settings"].get(k) != now[k]]
    if differ:
        raise MedsynthError(f"--include {path}: measured with other settings ({', '.join(differ)}); rows would not compare.")
    return {"from": str(path), "real_run": earlier["real_run"], "rows": earlier["rows"]}


def _write(out: Path, result: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(result) + "\n")


def main(argv: list[str] | None = None) -> int:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(prog="medsynth-bench-generators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="Decathlon-layout folder (imagesTr/ + labelsTr/); default: phantoms")
    parser.add_argument("--families", nargs="+", default=list(defaults.families), choices=sorted(PRESETS))
    for name in ("budget_min", "size", "phantoms", "cohort_size", "seg_steps", "seg_batch_size", "sampling_probe", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)), default=getattr(defaults, name))
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="segmenters without classical augmentation")
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--include", type=Path, help="results.json of an earlier run with the same data, size and budget: "
                        "its rows join this table, marked as such")
    args = parser.parse_args(argv)
    from medsynth.local.demo import dataset_name

    settings = BenchSettings(**{k: v for k, v in vars(args).items() if k not in ("families", "include")},
                             families=tuple(args.families), dataset=dataset_name(args.data))
    try:
        included = _included(args.include, settings) if args.include else None
        run(settings, included=included)
    except MedsynthError as exc:
        print(f"bench-generators: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
