"""``make bench-ingest``: DICOM series → canonical volumes beside dcm2niix, and ingestion through the service.

1. **Conversion**, in one run, alternating round by round on the same input: ``dcm2niix`` (Debian's
   build, uncompressed output, no sidecars) and medsynth's reader (:mod:`medsynth.dicom.series`, each
   series read, assembled and written as an uncompressed NIfTI) in one process and in two. Reports, for
   each input, files/s and MB/s (median of ``--rounds``), the ratio to dcm2niix, and whether each
   series is voxel-identical to dcm2niix's. Input: ``--dicom DIR`` (one folder per series), else the GE
   and the Siemens (mosaic) series of ``../shared/data/dcm_qa_nih`` (only in the development tree),
   each measured on its own, else series this bench writes itself (and says so). A round converts an
   input's series as many times as it takes to reach :data:`MIN_FILES_PER_ROUND` files (dcm_qa_nih's
   Siemens series are 8 files), so that a round is not timer noise.
2. **Through the service**: the local stack started in a temporary home; ``--scans`` small NIfTI
   scans uploaded by ``--clients`` concurrent clients (scans/s), then ``--series`` DICOM series by REST
   upload (series/s and files/s, de-identification included).

Writes ``results.json`` and ``results.md`` under ``--out``. Run it alone: it is a measurement.
``--memory`` measures instead the ingest service's peak memory under large concurrent uploads
(:mod:`medsynth.bench.ingest_memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHARED_QA = Path(__file__).resolve().parents[5] / ".." / "shared" / "data" / "dcm_qa_nih" / "In"
#: The inputs of dcm_qa_nih, each measured on its own: name → study folder (one folder per series).
VENDORS = {"GE": "20180918GE", "Siemens": "20180918Si"}
MIN_FILES_PER_ROUND = 150
BASE_PORT = 24700


def series_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.dcm")))


def write_synthetic_series(root: Path, n: int = 4, slices: int = 150) -> list[Path]:
    """``n`` series of 64×64 single-frame MR instances, ``slices`` each (dcm_qa_nih's GE size)."""
    from medsynth.dicom.write import SeriesIdentity, series_from_volume

    folders = []
    for s in range(n):
        rng = np.random.default_rng(s)
        image = rng.integers(0, 4000, (64, 64, slices)).astype(np.float32)
        affine = np.diag([3.75, 3.75, 1.0, 1.0])
        folder = root / f"series{s:02d}"
        folder.mkdir(parents=True)
        for k, ds in enumerate(series_from_volume(image, affine, SeriesIdentity(f"P{s}", f"Bench^{s}", series_number=s + 1))):
            ds.save_as(folder / f"{k:05d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


def convert_ours(folder: Path, out: Path) -> int:
    """Read, assemble and write one series as medsynth assembles a staged series (its instances parsed
    for geometry and pixels only); returns the number of files."""
    import nibabel as nib

    from medsynth.dicom.series import read_instance, series_volume

    files = sorted(folder.glob("*.dcm"))
    volume = series_volume([(f.name, read_instance(f.read_bytes(), f.name, geometry_only=True)) for f in files], max_voxels=2**31)
    scan = volume.canonical()
    nib.save(nib.Nifti1Image(scan.image, scan.affine), out / f"{folder.name}.nii")
    return len(files)


def convert_dcm2niix(folder: Path, out: Path) -> None:
    subprocess.run(["dcm2niix", "-b", "n", "-z", "n", "-o", str(out), "-f", folder.name, str(folder)], check=True, capture_output=True)


def conversion_phase(folders: list[Path], rounds: int, echo) -> dict[str, Any]:
    """dcm2niix and medsynth (one process, two) alternating round by round on ``folders``: times,
    files/s, ratios to dcm2niix, and each series' voxel identity with dcm2niix's."""
    import nibabel as nib

    from medsynth.io.nifti import canonicalise

    files = sum(len(list(f.glob("*.dcm"))) for f in folders)
    repeat = max(1, -(-MIN_FILES_PER_ROUND // files))
    megabytes = sum(p.stat().st_size for f in folders for p in f.glob("*.dcm")) / 1e6
    times: dict[str, list[float]] = {"dcm2niix": [], "medsynth, 1 process": [], "medsynth, 2 processes": []}
    work = Path(tempfile.mkdtemp(prefix="medsynth-bench-ingest-"))
    with ProcessPoolExecutor(2) as pool:
        warm = work / "warm-up"
        warm.mkdir()
        list(pool.map(convert_ours, folders[:2], [warm] * 2))  # workers started and their imports done before timing
        convert_ours(folders[0], warm)
        convert_dcm2niix(folders[0], warm)
        for r in range(rounds):
            for name in times:
                outs = [work / f"{r}-{name.replace(' ', '').replace(',', '')}-{k}" for k in range(repeat)]
                for out in outs:
                    out.mkdir()
                jobs = [(folder, out) for out in outs for folder in folders]
                t = time.perf_counter()
                if name == "dcm2niix":
                    for folder, out in jobs:
                        convert_dcm2niix(folder, out)
                elif name == "medsynth, 1 process":
                    for folder, out in jobs:
                        convert_ours(folder, out)
                else:
                    list(pool.map(convert_ours, *zip(*jobs, strict=True)))
                times[name].append(time.perf_counter() - t)
            echo(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    per_series = []
    for folder in folders:
        ours = nib.load(work / f"0-medsynth1process-0/{folder.name}.nii")
        ref = nib.load(work / f"0-dcm2niix-0/{folder.name}.nii")
        a = canonicalise(np.asarray(ours.dataobj, dtype=np.float32), ours.affine)
        b = canonicalise(np.asarray(ref.dataobj, dtype=np.float32), ref.affine)
        per_series.append({"series": folder.name, "files": len(list(folder.glob("*.dcm"))), "shape": list(a.shape),
                           "voxel_identical": a.shape == b.shape and bool(np.array_equal(a.image, b.image)),
                           "affine_difference": float(np.abs(a.affine - b.affine).max()) if a.shape == b.shape else None})
    shutil.rmtree(work)
    converted = files * repeat
    rows = {name: {"median_s": statistics.median(t), "best_s": min(t), "files_per_s": converted / statistics.median(t),
                   "mb_per_s": megabytes * repeat / statistics.median(t)} for name, t in times.items()}
    for name, row in rows.items():
        # each round ran both converters back to back: the ratio within a round is the fairest on a noisy machine
        row["vs_dcm2niix"] = statistics.median(d / t for d, t in zip(times["dcm2niix"], times[name], strict=True))
        row["vs_dcm2niix_best"] = min(times["dcm2niix"]) / row["best_s"]
    differences = [s["affine_difference"] for s in per_series if s["affine_difference"] is not None]
    return {"series": len(folders), "files": files, "megabytes": megabytes, "rounds": rounds, "repeat": repeat, "rows": rows,
            "per_series": per_series, "voxel_identical": [s["voxel_identical"] for s in per_series],
            "max_affine_difference": max(differences, default=None)}


def service_phase(scans: int, series: int, clients: int, echo) -> dict[str, Any]:
    """NIfTI and DICOM uploads through the ingest service of a freshly started local stack."""
    from medsynth.bench.load import scan_bytes
    from medsynth.local.api_client import api_client
    from medsynth.local.ingest_client import UPLOAD_RETRY
    from medsynth.core.settings import load_settings
    from medsynth.local import stack

    home = Path(tempfile.mkdtemp(prefix="medsynth-bench-ingest-home-"))
    # only what ingestion needs: no TorchServe, no workers
    os.environ.update(MEDSYNTH_HOME=str(home), MEDSYNTH_STACK_BASE_PORT=str(BASE_PORT), MEDSYNTH_SAMPLER_BACKEND="inprocess")
    settings = load_settings()
    url = f"http://127.0.0.1:{BASE_PORT + 1}"
    echo(f"== starting the stack in {home}")
    stack.up(settings, echo=echo, names=["api", "ingest"])
    try:
        # one key per client, as bench-load: a key may upload MEDSYNTH_UPLOADS_PER_MINUTE_PER_KEY scans a minute
        keys = [stack.issue_key(settings, "uploader", name=f"bench-ingest {k}") for k in range(clients)]
        payloads = [scan_bytes(i) for i in range(scans)]
        statuses: list[int] = []

        def nifti(i: int) -> None:
            image, label = payloads[i]
            with api_client(api_key=keys[i % clients], retry=UPLOAD_RETRY) as client:
                r = client.post(f"{url}/v1/datasets/bench-nifti/scans", data={"patient_id": f"p{i:05d}"},
                                files={"image": ("s.nii.gz", image), "label": ("l.nii.gz", label)})
            statuses.append(r.status_code)

        echo(f"== {scans} NIfTI uploads, {clients} clients")
        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(nifti, range(scans)))
        nifti_s = time.perf_counter() - t
        folders = write_synthetic_series(home / "series", n=series, slices=30)
        uploads = [[("file", (f.name, f.read_bytes(), "application/dicom")) for f in sorted(folder.glob("*.dcm"))] for folder in folders]
        dicom_statuses: list[int] = []

        def dicom(i: int) -> None:
            with api_client(api_key=keys[i % clients], timeout=300) as client:
                dicom_statuses.append(client.post(f"{url}/v1/datasets/bench-dicom/dicom", files=uploads[i]).status_code)

        echo(f"== {series} DICOM series (30 files each) by REST upload, {min(clients, series)} clients")
        t = time.perf_counter()
        with ThreadPoolExecutor(min(clients, series)) as pool:
            list(pool.map(dicom, range(series)))
        dicom_s = time.perf_counter() - t
    finally:
        stack.down(settings, echo=lambda *_: None)
        shutil.rmtree(home, ignore_errors=True)
    return {"nifti": {"scans": scans, "clients": clients, "seconds": nifti_s, "scans_per_s": scans / nifti_s,
                      "accepted": statuses.count(201), "refused": {str(c): statuses.count(c) for c in set(statuses) - {201}}},
            "dicom": {"series": series, "files": series * 30, "seconds": dicom_s, "series_per_s": series / dicom_s,
                      "files_per_s": series * 30 / dicom_s, "accepted": dicom_statuses.count(201)}}


def table(r: dict[str, Any]) -> str:
    lines = [f"# make bench-ingest ({r['cpu_count']} CPU cores)", ""]
    for name, c in r["conversion"].items():
        lines += [f"## Conversion: {name}", "",
                  f"{c['series']} series, {c['files']} files, {c['megabytes']:.1f} MB ({r['inputs'][name]}); each round converts "
                  f"them {c['repeat']} time(s); median of {c['rounds']} rounds, dcm2niix and medsynth alternating in one run.", "",
                  "| converter | median s | best s | files/s (median) | MB/s | files/s vs dcm2niix (median of rounds) | (best vs best) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for converter, row in c["rows"].items():
            lines.append(f"| {converter} | {row['median_s']:.3f} | {row['best_s']:.3f} | {row['files_per_s']:.0f} | "
                         f"{row['mb_per_s']:.1f} | {row['vs_dcm2niix']:.2f}x | {row['vs_dcm2niix_best']:.2f}x |")
        largest = c["max_affine_difference"]
        lines += ["", f"Voxel-identical to dcm2niix: {sum(c['voxel_identical'])}/{len(c['voxel_identical'])} series"
                      + (f"; largest affine difference {largest:.2g} mm." if largest is not None else "."), "",
                  "| series | files | shape | voxel-identical | affine difference (mm) |", "|---|---:|---|---|---:|"]
        for s in c["per_series"]:
            difference = f"{s['affine_difference']:.2g}" if s["affine_difference"] is not None else "-"
            lines.append(f"| {s['series']} | {s['files']} | {'x'.join(map(str, s['shape']))} | "
                         f"{'yes' if s['voxel_identical'] else 'NO'} | {difference} |")
        lines.append("")
    if "service" in r:
        n, d = r["service"]["nifti"], r["service"]["dicom"]
        lines += [f"Through the ingest service: {n['scans']} NIfTI scans by {n['clients']} clients at {n['scans_per_s']:.1f} scans/s "
                  f"({n['accepted']} accepted); {d['series']} DICOM series ({d['files']} files) by REST upload at "
                  f"{d['series_per_s']:.2f} series/s, {d['files_per_s']:.0f} files/s ({d['accepted']} accepted).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsynth.bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", type=Path, help="A folder of series folders (default: dcm_qa_nih's GE and Siemens series, "
                        "each on its own, when present).")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scans", type=int, default=500)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-service", action="store_true", help="Only the conversion phase (no stack).")
    parser.add_argument("--out", default="bench-results/ingest")
    parser.add_argument("--memory", action="store_true", help="Only the ingest service's peak memory under two concurrent "
                        "300 MB uploads (python -m medsynth.bench.ingest_memory --help for its options).")
    args = parser.parse_args(argv)
    echo = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.memory:
        from medsynth.bench import ingest_memory

        return ingest_memory.main(["--out", args.out])
    if not shutil.which("dcm2niix"):
        raise SystemExit("dcm2niix is not installed (Debian package dcm2niix; `make bench-ingest` installs it)")
    inputs: dict[str, tuple[list[Path], str]] = {}
    if args.dicom:
        inputs[args.dicom.name] = (series_folders(args.dicom), str(args.dicom))
    else:
        for name, study in VENDORS.items():
            if (SHARED_QA / study).is_dir():
                inputs[name] = (series_folders(SHARED_QA / study), f"dcm_qa_nih {study} (../shared, development tree only)")
    if not inputs:
        inputs["synthetic"] = (write_synthetic_series(Path(tempfile.mkdtemp(prefix="medsynth-bench-series-"))),
                               "4 series of 150 synthetic 64x64 MR files written by this bench (../shared/data/dcm_qa_nih is not here)")
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "inputs": {name: source for name, (_, source) in inputs.items()},
                               "conversion": {}}
    for name, (folders, source) in inputs.items():
        echo(f"== conversion, {name}: {len(folders)} series from {source}")
        results["conversion"][name] = conversion_phase(folders, args.rounds, echo)
    if not args.no_service:
        results["service"] = service_phase(args.scans, args.series, args.clients, echo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results))
    echo(table(results))
    return 0 if all(all(c["voxel_identical"]) for c in results["conversion"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
