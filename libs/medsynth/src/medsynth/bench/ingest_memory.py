"""``make bench-ingest ARGS=--memory``: the ingest service's peak memory while large NIfTI uploads arrive at once.

The ingest service runs as its own process (``medsynth.api.app.main("ingest")``: a local store, the
local stack's broker (tansu on SeaweedFS, from the tools lock), authentication off, the upload and voxel limits raised to take the scans).
After one small upload (imports and caches warm), ``--uploads`` distinct float32 ``.nii`` volumes of
about ``--mb`` MB each (stored LPS, so the canonical copy is reoriented) are sent at the same moment,
and the service's resident set size is sampled with psutil every 20 ms until all are answered. The
report gives the RSS before, the sampled peak, the kernel's high-water mark (VmHWM, which no sample can
miss), and each upload's status and seconds. ``--service-pythonpath`` runs the service from another
source tree (e.g. ``git archive`` of an older commit, unpacked) to compare.

Writes ``memory.json`` and ``memory.md`` under ``--out``. Run it alone: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

LPS = np.diag([-0.8, -0.8, 1.0, 1.0])
SAMPLE_S = 0.02
MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_span(span: int) -> int:
    """A base port with ``span`` free ports from it (SeaweedFS takes ten)."""
    from medsynth.local.servers import port_open

    for _ in range(50):
        base = free_port()
        if base + span < 65536 and not any(port_open("127.0.0.1", base + i, timeout=0.05) for i in range(span)):
            return base
    raise SystemExit(f"found no {span} free ports in a row")


def start_broker(home: Path) -> tuple[str, list[Any]]:
    """The local stack's servers (tansu storing on SeaweedFS, the binaries of the tools lock): the
    bootstrap and the servers to stop, last started first."""
    from medsynth.local.servers import SEAWEED_PORT_SPAN, TANSU_BUCKET, S3Credentials, start_seaweedfs, start_tansu

    credentials = S3Credentials.for_home(home)
    s3_port = free_port_span(SEAWEED_PORT_SPAN)
    seaweedfs = start_seaweedfs(home / "seaweedfs", s3_port, credentials, home / "seaweedfs.log", buckets=[TANSU_BUCKET],
                                die_with_parent=True)
    try:
        port = free_port()
        tansu = start_tansu(port, f"127.0.0.1:{s3_port}", credentials, home / "broker.log", die_with_parent=True)
    except BaseException:
        seaweedfs.stop()
        raise
    return f"127.0.0.1:{port}", [tansu, seaweedfs]


def write_volume(path: Path, mb: float, seed: int) -> int:
    """A 512 x 512 x n float32 ``.nii`` of about ``mb`` MB (scanner-like integer intensities); its size."""
    import nibabel as nib

    slices = max(1, round(mb * MB / (512 * 512 * 4)))
    volume = np.random.default_rng(seed).integers(0, 4096, (512, 512, slices), dtype=np.int16).astype(np.float32)
    nib.Nifti1Image(volume, LPS).to_filename(path)
    return path.stat().st_size


class RssSampler:
    """Samples a process's RSS every :data:`SAMPLE_S` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS of ``pid`` (VmHWM, Linux), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(mb: float, uploads: int, pythonpath: str | None, echo) -> dict[str, Any]:
    import httpx

    from medsynth.bus.admin import ensure_topics
    from medsynth.bus.client import Bus
    from medsynth.bus.topics import all_topics
    from medsynth.core.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="medsynth-bench-memory-"))
    files = [home / "uploads" / f"scan{i}.nii" for i in range(uploads)]
    files[0].parent.mkdir(parents=True)
    sizes = [write_volume(path, mb, seed=i) for i, path in enumerate(files)]
    voxels = sizes[0] // 4
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bootstrap, servers = start_broker(home)
    try:
        ensure_topics(Bus(Settings(kafka_bootstrap=bootstrap, kafka_api_version=None), client_id="bench-admin"), all_topics("bench"))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
    env.update(MEDSYNTH_HOME=str(home), MEDSYNTH_HTTP_HOST="127.0.0.1", MEDSYNTH_HTTP_PORT=str(port), MEDSYNTH_AUTH_ENABLED="false",
               MEDSYNTH_KAFKA_BOOTSTRAP=bootstrap, MEDSYNTH_TOPIC_PREFIX="bench",
               MEDSYNTH_MAX_UPLOAD_BYTES=str(max(sizes) + (1 << 20)), MEDSYNTH_MAX_VOXELS=str(2 * voxels),
               MEDSYNTH_LARGE_UPLOAD_WAIT_S="600")  # the second upload queues: let it wait for its turn
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    log = open(home / "ingest.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([sys.executable, "-c", "from medsynth.api.app import main; main('ingest')"], env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the ingest service did not start; see {home / 'ingest.log'}")
            time.sleep(0.2)
        small = np.random.default_rng(99).random((32, 32, 16), dtype=np.float32)
        import nibabel as nib

        warm = httpx.post(f"{url}/v1/datasets/bench/scans", data={"patient_id": "warm"}, timeout=60,
                          files={"image": ("warm.nii", nib.Nifti1Image(small, LPS).to_bytes())})
        if warm.status_code != 201:
            raise SystemExit(f"the warm-up upload failed: {warm.status_code} {warm.text}")
        time.sleep(1.0)
        before = RssSampler(service.pid).process.memory_info().rss
        echo(f"== ingest service pid {service.pid}: {before / MB:.0f} MB resident after a small upload; "
             f"sending {uploads} uploads of {sizes[0] / MB:.0f} MB at once")
        start = threading.Barrier(uploads)

        def send(i: int) -> tuple[int, float, str]:
            with open(files[i], "rb") as f, httpx.Client(timeout=900) as client:
                start.wait()
                t = time.perf_counter()
                r = client.post(f"{url}/v1/datasets/bench/scans", data={"patient_id": f"p{i}"},
                                files={"image": (files[i].name, f, "application/octet-stream")})
                return r.status_code, time.perf_counter() - t, "" if r.status_code == 201 else r.text[:300]

        t = time.perf_counter()
        with RssSampler(service.pid) as sampler, ThreadPoolExecutor(uploads) as pool:
            answers = list(pool.map(send, range(uploads)))
        seconds = time.perf_counter() - t
        hwm = high_water_mark(service.pid)
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()
        for server in servers:
            server.stop()
    result = {"upload_bytes": sizes, "uploads": uploads, "rss_before": before, "rss_peak_sampled": sampler.peak,
              "samples": sampler.samples, "vm_hwm": hwm, "seconds": seconds,
              "answers": [{"status": s, "seconds": round(d, 2), "error": e} for s, d, e in answers],
              "service_pythonpath": pythonpath or "", "cpu_count": os.cpu_count()}
    shutil.rmtree(home, ignore_errors=True)
    return result


def table(r: dict[str, Any]) -> str:
    statuses = ", ".join(f"{a['status']} in {a['seconds']:.1f} s" for a in r["answers"])
    source = f" (service from {r['service_pythonpath']})" if r["service_pythonpath"] else ""
    hwm = f"{r['vm_hwm'] / MB:.0f} MB" if r["vm_hwm"] else "n/a"
    return "\n".join([
        f"# Ingest service memory: {r['uploads']} concurrent uploads of {r['upload_bytes'][0] / MB:.0f} MB (.nii, float32){source}",
        "",
        "| resident set size of the ingest process | MB |",
        "|---|---:|",
        f"| before (after one small upload) | {r['rss_before'] / MB:.0f} |",
        f"| peak while the uploads ran (psutil, every {SAMPLE_S * 1000:.0f} ms, {r['samples']} samples) "
        f"| {r['rss_peak_sampled'] / MB:.0f} |",
        f"| peak over the process's life (VmHWM) | {hwm.removesuffix(' MB')} |",
        "",
        f"Answers: {statuses}; {r['seconds']:.1f} s in all, {r['cpu_count']} CPU cores.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsynth.bench.ingest_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=300.0, help="Size of each upload, MB.")
    parser.add_argument("--uploads", type=int, default=2, help="Uploads sent at once.")
    parser.add_argument("--service-pythonpath", help="PYTHONPATH for the service process (another source tree to compare).")
    parser.add_argument("--out", default="bench-results/ingest")
    args = parser.parse_args(argv)
    echo = lambda *a: print(*a, flush=True)  # noqa: E731
    result = measure(args.mb, args.uploads, args.service_pythonpath, echo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2))
    (out / "memory.md").write_text(table(result))
    echo(table(result))
    return 0 if all(a["status"] == 201 for a in result["answers"]) else 1


if __name__ == "__main__":
    sys.exit(main())
