"""The audit trail: one record per guarded request, hash-chained; edits, removals and a cut-off tail
are detected; admins read their project's records; a read that cannot be recorded is not served."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from medsynth.api.app import create_api_app
from medsynth.auth.audit import HEAD_EVERY, AuditEntry, AuditLog
from medsynth.core.settings import Settings
from medsynth.local.cli import main as cli
from medsynth.store.projects import Projects
from medsynth.store import ObjectStore

from platform_fixtures import bearer


@pytest.fixture
def api(platform_settings: Settings, store: ObjectStore) -> Iterator[TestClient]:
    Projects(store).create("alpha")
    with TestClient(create_api_app(platform_settings, reconcile=False), raise_server_exceptions=False) as client:
        yield client


def entry(i: int) -> AuditEntry:
    return AuditEntry(action="job.read", method="GET", route="/v1/jobs/{job_id}", resource={"job_id": f"j{i}"}, client="10.0.0.1")


def test_admins_read_their_projects_records_filtered(api: TestClient, platform_settings: Settings) -> None:
    admin, researcher = bearer(platform_settings, "admin", "alpha"), bearer(platform_settings, "researcher", "alpha")
    other = bearer(platform_settings, "researcher")  # the default project
    for i in range(3):
        api.get(f"/v1/jobs/j{i}", headers=researcher)
    api.get("/v1/jobs", headers=other)
    api.get("/v1/jobs", headers={"Authorization": "Bearer msk_0_0"})
    page = api.get("/v1/audit", headers=admin).json()
    assert [(r["action"], r["outcome"]) for r in page["records"]] == [("job.read", 404)] * 3
    assert all(r["project"] == "alpha" for r in page["records"])  # never the default project's
    assert [r["resource"]["job_id"] for r in page["records"]] == ["j0", "j1", "j2"]
    assert api.get("/v1/audit", params={"outcome": 200}, headers=admin).json()["records"][0]["action"] == "audit.read"
    with_refusals = api.get("/v1/audit", params={"unattributed": True, "outcome": 401}, headers=admin).json()["records"]
    assert [r["reason"] for r in with_refusals] == ["unknown API key"]
    after = api.get("/v1/audit", params={"since_seq": page["records"][1]["seq"], "limit": 1}, headers=admin).json()
    assert [r["resource"]["job_id"] for r in after["records"]] == ["j2"] and after["next_seq"] == page["records"][2]["seq"]
    assert api.get("/v1/audit", headers=researcher).status_code == 403
    check = api.get("/v1/audit/verify", headers=admin).json()
    assert check["ok"] and check["records"] >= 8


def test_an_edited_record_is_detected(api: TestClient, platform_settings: Settings, store: ObjectStore) -> None:
    admin = bearer(platform_settings, "admin", "alpha")
    for i in range(4):
        api.get(f"/v1/jobs/j{i}", headers=admin)
    key = "audit/log/000000000002.json"
    record = store.get_json(key)
    record["outcome"] = 200  # someone hides a refusal
    store.put_bytes(key, json.dumps(record).encode())
    r = api.get("/v1/audit/verify", headers=admin)
    assert r.status_code == 409 and "record 2 was altered" in r.json()["detail"], r.text
    record["hash"] = AuditLog(store).records()[1].model_copy(update={"outcome": 200}).digest()  # and recomputes its hash
    store.put_bytes(key, json.dumps(record).encode())
    assert "record 3 does not follow record 2" in api.get("/v1/audit/verify", headers=admin).json()["detail"]


def test_removed_records_are_detected(store: ObjectStore) -> None:
    log = AuditLog(store)
    for i in range(HEAD_EVERY + 3):
        log.append(entry(i), 200)
    assert log.verify().ok and log.verify().records == HEAD_EVERY + 3
    store.delete("audit/log/000000000005.json")
    check = log.verify()
    assert not check.ok and check.broken_at == 5 and "record 5 is missing" in check.reason
    store.put_bytes("audit/log/000000000005.json", b"{}")
    assert "is not an audit record" in log.verify().reason
    store.delete("audit/log/000000000005.json")
    for seq in range(5, HEAD_EVERY + 4):  # the tail cut off, back past the last note of the chain's end
        store.delete(f"audit/log/{seq:012d}.json")
    check = log.verify()
    assert not check.ok and f"the chain reached {HEAD_EVERY}" in check.reason


def test_writers_appending_at_once_make_one_unbroken_chain(store: ObjectStore) -> None:
    writers = [AuditLog(store) for _ in range(3)]  # as three service processes would

    def write(log: AuditLog, k: int) -> None:
        for i in range(25):
            log.append(entry(k * 100 + i), 200)

    threads = [threading.Thread(target=write, args=(log, k)) for k, log in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = AuditLog(store).verify()
    assert check.ok and check.records == 75, check
    assert sorted(r.resource["job_id"] for r in AuditLog(store).records()) == sorted(f"j{k * 100 + i}" for k in range(3) for i in range(25))


def test_a_read_that_cannot_be_recorded_is_not_served(api: TestClient, platform_settings: Settings) -> None:
    researcher = bearer(platform_settings, "researcher", "alpha")
    assert api.get("/v1/jobs", headers=researcher).status_code == 200
    blocked = platform_settings.local_store_root / "audit" / "log" / "000000000002.json"
    blocked.mkdir(parents=True)  # the store cannot take the next record
    r = api.get("/v1/jobs", headers=researcher)
    assert r.status_code == 503 and "audit trail" in r.json()["detail"] and r.headers["retry-after"]


def test_the_cli_bootstraps_keys_and_verifies_the_chain(platform_settings: Settings, store: ObjectStore, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MEDSYNTH_STORE_ROOT", str(platform_settings.local_store_root))
    assert cli(["projects", "create", "radiology"]) == 0
    assert cli(["keys", "create", "--project", "radiology", "--role", "uploader", "--name", "PACS gateway"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("msk_")
    assert cli(["keys", "create", "--project", "nowhere", "--role", "viewer"]) == 1  # no such project: refused
    assert cli(["keys", "list", "--project", "radiology"]) == 0
    assert "PACS gateway" in capsys.readouterr().out
    log = AuditLog(store)
    for i in range(3):
        log.append(entry(i), 200)
    assert cli(["audit", "verify"]) == 0
    store.delete("audit/log/000000000002.json")
    assert cli(["audit", "verify"]) == 1 and "BROKEN at record 2" in capsys.readouterr().out
