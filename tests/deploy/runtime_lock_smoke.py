"""Do the services run from the runtime lock alone? (issue 21; not part of `make test`: it needs a
second venv of ~6 GB.)

    python3.11 -m venv /tmp/rtvenv
    /tmp/rtvenv/bin/pip install -r requirements.lock && /tmp/rtvenv/bin/pip install --no-deps -e libs/medsynth
    .venv/bin/python tests/deploy/runtime_lock_smoke.py /tmp/rtvenv/bin/python

The api, ingest and trainer services run with the given interpreter, against an S3 server and a Kafka
broker they did not start (SeaweedFS and tansu, run here from the tools venv, as a cluster's would
be): each answers /readyz, four phantom scans are uploaded and a prepare-dataset job succeeds on the
trainer. Exit status 0 when it does.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from medsynth.local.servers import S3Credentials, start_seaweedfs, start_tansu
from medsynth.core.settings import Settings
from medsynth.bus.admin import ensure_topics
from medsynth.bus.client import Bus
from medsynth.bus.topics import all_topics
from medsynth.auth.keys import ApiKeys
from medsynth.store import open_store
from medsynth.datasets.phantoms import write_phantom_dataset

RT = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
home = Path(tempfile.mkdtemp(prefix="rtcheck-"))
creds = S3Credentials.for_home(home)
base = 24800
sw = start_seaweedfs(home / "sw", base + 30, creds, home / "sw.log", buckets=["tansu", "medsynth"])
ts = start_tansu(base + 20, f"127.0.0.1:{base + 30}", creds, home / "tansu.log")
env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")}
env.update(MEDSYNTH_HOME=str(home), MEDSYNTH_STORE="s3", MEDSYNTH_S3_ENDPOINT=f"127.0.0.1:{base + 30}",
           MEDSYNTH_S3_ACCESS_KEY=creds.access_key, MEDSYNTH_S3_SECRET_KEY=creds.secret_key, MEDSYNTH_S3_SECURE="false",
           MEDSYNTH_KAFKA_BOOTSTRAP=f"127.0.0.1:{base + 20}", MEDSYNTH_METRICS_TOKEN="m" * 32, MEDSYNTH_DICOM_PORT=str(base + 2))
os.environ.update(env)
settings = Settings()
ensure_topics(Bus(settings, client_id="check"), all_topics(settings.topic_prefix))
key = ApiKeys(open_store(settings)).create("default", "researcher", name="check", expires_in_days=1, created_by="check")[1]
procs = {}
for name, port in (("api", base + 0), ("ingest", base + 1), ("trainer", base + 3)):
    log = open(home / f"{name}.log", "wb")
    procs[name] = subprocess.Popen([RT, f"services/{name}/main.py"], env={**env, "MEDSYNTH_HTTP_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
ok = True
try:
    h = {"Authorization": f"Bearer {key}"}
    for name, port in (("api", base), ("ingest", base + 1), ("trainer", base + 3)):
        t0, r = time.monotonic(), httpx.Response(0)
        while time.monotonic() - t0 < 120:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if procs[name].poll() is not None:
                break
            time.sleep(0.5)
        print(name, "readyz", r.status_code, f"after {time.monotonic() - t0:.1f} s", flush=True)
    names = write_phantom_dataset(home / "msd", n=4, seed=3, shape=(24, 24, 10), spacing=(1.0, 1.0, 2.0))
    for n in names:
        files = {"image": (f"{n}.nii.gz", (home / "msd/imagesTr" / f"{n}.nii.gz").read_bytes()),
                 "label": (f"{n}.nii.gz", (home / "msd/labelsTr" / f"{n}.nii.gz").read_bytes())}
        r = httpx.post(f"http://127.0.0.1:{base + 1}/v1/datasets/ph/scans", files=files, data={"patient_id": n}, headers=h, timeout=60)
        print("upload", n, r.status_code, flush=True)
    r = httpx.post(f"http://127.0.0.1:{base}/v1/datasets/ph/views", json={"size": 16, "val_fraction": 0.25, "test_fraction": 0.25}, headers=h, timeout=30)
    print("prepare", r.status_code, r.text[:200], flush=True)
    job = r.json()["job_id"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        rec = httpx.get(f"http://127.0.0.1:{base}/v1/jobs/{job}", headers=h, timeout=10).json()
        if rec["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    print("prepare job", rec["state"], rec.get("error"), f"{time.monotonic() - t0:.1f} s", rec.get("result_keys"), flush=True)
    ok = rec["state"] == "succeeded"
finally:
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        p.wait(30)
    ts.stop(); sw.stop()
    for name in procs:
        tail = (home / f"{name}.log").read_text()[-1500:]
        if not ok:
            print(f"--- {name}.log\n{tail}")
print("RESULT", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
