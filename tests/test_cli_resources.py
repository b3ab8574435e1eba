"""`medsynth <resource> list|show|create|cancel|download` against a real api (uvicorn on a socket, the
test broker, a local store): tables and --json, a job created and cancelled, a finished cohort downloaded
and a running one refused with the api's message, exit codes (0 done, 1 refused, 2 usage), the key from
the environment or a config file of mode 0600 only, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Response  # module level: the stand-in's annotations are resolved here

from medsynth import __version__
from medsynth.api.app import create_api_app
from medsynth.bus.messages import JobKind
from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.local.cli import main
from medsynth.local.demo import cohort_lines
from medsynth.local.resources import problem_message
from medsynth.store import ObjectStore

from platform_fixtures import api_key, live_server, served

DATASET = "ph"


@pytest.fixture
def api(platform_settings: Settings, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The api served on a socket over a store holding a two-patient dataset; the CLI's environment
    pointing at it with a researcher key (and at a config file that does not exist)."""
    write_phantom_dataset(tmp_path / "msd", n=2, seed=3, shape=(16, 16, 4))
    for case in ("phantom_000", "phantom_001"):
        image, label = ((tmp_path / "msd" / part / f"{case}.nii.gz").read_bytes() for part in ("imagesTr", "labelsTr"))
        ingest_scan(store, DATASET, case, Upload(f"{case}.nii.gz", image), Upload(f"{case}.nii.gz", label), max_voxels=10**6)
    with served(create_api_app(platform_settings, reconcile=False), platform_settings) as (host, port):
        url = f"http://{host}:{port}"
        for name in [n for n in os.environ if n.startswith("MEDSYNTH_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("MEDSYNTH_API_URL", url)
        monkeypatch.setenv("MEDSYNTH_API_KEY", api_key(platform_settings, "researcher"))
        monkeypatch.setenv("MEDSYNTH_CONFIG", str(tmp_path / "no-config.toml"))
        monkeypatch.chdir(tmp_path)
        yield url


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run `medsynth argv…` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: usage errors, --help, --version
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def job(store: ObjectStore, kind: JobKind, state: JobState, result_keys: dict[str, str] | None = None, **spec) -> str:
    job_id = new_job_id(kind)
    JobRecords(store).put(JobRecord(job_id=job_id, kind=kind, spec=spec, state=state, result_keys=result_keys or {}, progress=0.5))
    return job_id


def finished_cohort(store: ObjectStore) -> str:
    """A succeeded cohort as the sampler leaves one: its folder with a sample, the contact sheet and the manifest."""
    store.put_bytes("cohorts/c1/samples/00000_image.nii.gz", b"image-bytes")
    store.put_bytes("cohorts/c1/contact_sheet.png", b"png-bytes")
    store.put_json("cohorts/c1/manifest.json", {"count": 1, "formats": ["nifti"], "samples": [{"index": 0}]})
    return job(store, JobKind.sample_cohort, JobState.succeeded, {"manifest": "cohorts/c1/manifest.json"}, generator_id="g1", count=1)


def test_list_and_show_print_tables_or_the_apis_json(api: str, store: ObjectStore, capsys) -> None:
    cohort = finished_cohort(store)
    code, out, _ = cli(capsys, "datasets", "list")
    assert code == 0 and out.splitlines()[0].split() == ["dataset", "version", "scans", "patients", "labelled", "created"]
    assert out.splitlines()[1].split()[:5] == [DATASET, "2", "2", "2", "2"]  # a version per scan ingested
    code, out, _ = cli(capsys, "datasets", "list", "--json")
    assert code == 0 and json.loads(out)["datasets"][0]["dataset"] == DATASET  # the api's body as it came

    code, out, _ = cli(capsys, "cohorts", "list")
    row = out.splitlines()[1].split()
    assert code == 0 and row[:5] == [cohort, "succeeded", "50%", "g1", "1"]
    code, out, _ = cli(capsys, "cohorts", "show", cohort)
    assert code == 0 and f"  job_id: {cohort}" in out and "  state: succeeded" in out and "samples: (1 items)" in out
    assert f"medsynth cohorts show {cohort} --json" in out  # the samples were counted, not shown
    code, out, _ = cli(capsys, "cohorts", "show", cohort, "--json")
    assert code == 0 and json.loads(out)["manifest"]["samples"] == [{"index": 0}]
    code, out, _ = cli(capsys, "jobs", "list", "--json", "--kind", "sample-cohort")
    assert code == 0 and [j["job_id"] for j in json.loads(out)["jobs"]] == [cohort]
    code, out, _ = cli(capsys, "datasets", "show", DATASET)
    assert code == 0 and f"dataset: {DATASET}" in out and "scans: 2" in out
    code, out, _ = cli(capsys, "jobs", "list", "--limit", "1", "--json")
    assert code == 0 and json.loads(out)["count"] == 1
    assert cli(capsys, "studies", "list")[1] == "no studies\n"
    code, out, _ = cli(capsys, "generators", "list", "--json")
    assert code == 0 and json.loads(out) == {"jobs": [], "count": 0, "next_cursor": None}  # the API's JSON, as it is


def test_a_job_is_created_and_cancelled(api: str, capsys) -> None:
    code, out, err = cli(capsys, "views", "create", "--dataset", DATASET, "--size", "32")
    assert code == 0, err
    job_id = out.split()[1].rstrip(":")
    assert job_id.startswith("prepare-dataset-") and "queued" in out and f"medsynth jobs show {job_id}" in out
    code, out, _ = cli(capsys, "views", "list", "--state", "queued")
    assert code == 0 and job_id in out and DATASET in out
    code, out, _ = cli(capsys, "jobs", "cancel", job_id)
    assert code == 0 and out.strip() == f"job {job_id}: cancelled"
    code, out, _ = cli(capsys, "jobs", "show", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    code, _, err = cli(capsys, "jobs", "cancel", job_id)  # the api's 409, in place
    assert code == 1 and err.strip() == f"medsynth: error: cancelling job {job_id}: HTTP 409: job {job_id} is already cancelled"


def test_a_body_from_a_file_with_flags_over_it(api: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "view.yaml").write_text("size: 16\nseed: 3\n")
    code, out, err = cli(capsys, "views", "create", "--dataset", DATASET, "-f", str(tmp_path / "view.yaml"), "--seed", "5", "--json")
    assert code == 0, err
    spec = json.loads(out)["spec"]
    assert (spec["size"], spec["seed"], spec["dataset"]) == (16, "5", DATASET)  # uint64 in the proto's JSON: a string


def test_a_finished_cohort_downloads_as_a_zip(api: str, store: ObjectStore, tmp_path: Path, capsys) -> None:
    cohort = finished_cohort(store)
    code, out, err = cli(capsys, "cohorts", "download", cohort)
    assert code == 0, err
    path = tmp_path / f"{cohort}.zip"
    assert out.startswith(f"wrote {cohort}.zip (")
    with zipfile.ZipFile(path) as archive:
        names = ("samples/00000_image.nii.gz", "contact_sheet.png", "manifest.json")
        assert sorted(archive.namelist()) == sorted(f"{cohort}/{n}" for n in names)
        assert archive.read(f"{cohort}/samples/00000_image.nii.gz") == b"image-bytes"
    code, _, err = cli(capsys, "cohorts", "download", cohort)
    assert code == 1 and "already exists; --force replaces it" in err
    (tmp_path / "out").mkdir()
    code, out, _ = cli(capsys, "cohorts", "download", cohort, "--out", "out", "--json")
    assert code == 0 and json.loads(out)["files"][0]["path"] == f"out/{cohort}.zip" and not list((tmp_path / "out").glob("*.part"))


def test_a_cohort_still_running_is_refused_with_the_apis_message(api: str, store: ObjectStore, tmp_path: Path, capsys) -> None:
    running = job(store, JobKind.sample_cohort, JobState.running, generator_id="g1", count=4)
    code, out, err = cli(capsys, "cohorts", "download", running)
    assert code == 1 and out == ""
    assert err.strip() == f"medsynth: error: downloading cohort {running}: HTTP 409: cohort {running} is running, not ready"
    assert not list(tmp_path.glob("*.zip*"))


def test_an_evaluation_report_downloads(api: str, store: ObjectStore, tmp_path: Path, capsys) -> None:
    store.put_bytes("evaluations/e1/report.html", b"<html>the report</html>")
    store.put_json("evaluations/e1/report.json", {"cohort_id": "c"})
    evaluation = job(store, JobKind.evaluate, JobState.succeeded,
                     {"report_html": "evaluations/e1/report.html", "report_json": "evaluations/e1/report.json"}, cohort_id="c")
    code, out, err = cli(capsys, "evaluations", "download", evaluation, "--out", "report.html")
    assert code == 0, err
    assert (tmp_path / "report.html").read_bytes() == b"<html>the report</html>"


def test_bad_input_is_answered_with_the_apis_message_and_exit_1(api: str, store: ObjectStore, capsys) -> None:
    code, out, err = cli(capsys, "cohorts", "create", "--generator", "g1", "--count", "0")
    assert code == 1 and out == "" and err.startswith("medsynth: error: creating a cohort: HTTP 422: ")
    assert "count: Input should be greater than or equal to 1" in err
    code, _, err = cli(capsys, "cohorts", "create", "--generator", "nope", "--count", "2")
    assert code == 1 and "HTTP 404" in err and "nope" in err
    view_job = job(store, JobKind.prepare_dataset, JobState.queued, dataset=DATASET)
    code, _, err = cli(capsys, "cohorts", "cancel", view_job)  # another kind's id: refused by the cohort's route, not cancelled
    assert code == 1 and "HTTP 404" in err and "prepare-dataset job" in err
    assert JobRecords(store).get(view_job).state is JobState.queued
    code, _, err = cli(capsys, "datasets", "show", "absent")
    assert code == 1 and "HTTP 404" in err and "absent" in err


def test_usage_errors_exit_2(api: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for argv in (["cohorts"], ["cohorts", "show"], ["cohorts", "frobnicate"], ["datasets", "cancel", "x"],
                 ["jobs", "list", "--limit", "0"], ["jobs", "list", "--state", "sleeping"], ["views", "show", "v1"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and "usage: medsynth" in err, argv
    monkeypatch.delenv("MEDSYNTH_API_KEY")
    code, _, err = cli(capsys, "jobs", "list")
    assert code == 2 and "no API key: set MEDSYNTH_API_KEY, or api_key in" in err and "--role researcher" in err


def test_the_key_comes_from_a_config_file_of_mode_0600_only(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'api_url = "{api}"\napi_key = "{os.environ["MEDSYNTH_API_KEY"]}"\n')
    for name in ("MEDSYNTH_API_KEY", "MEDSYNTH_API_URL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDSYNTH_CONFIG", str(config))
    config.chmod(0o644)
    code, out, err = cli(capsys, "datasets", "list")
    assert code == 2 and out == ""
    assert f"refusing the config file {config}" in err and "(mode 0644)" in err and f"chmod 600 {config}" in err
    config.chmod(0o640)
    assert cli(capsys, "datasets", "list")[0] == 2
    config.chmod(0o600)
    code, out, err = cli(capsys, "datasets", "list")
    assert code == 0 and DATASET in out, err
    config.write_text('api_key = "x"\ncolour = "blue"\n')
    code, _, err = cli(capsys, "datasets", "list")
    assert code == 2 and "unknown settings ['colour']" in err


def test_a_key_that_is_refused_exits_1(api: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MEDSYNTH_API_KEY", "msk_nothing_nothing")
    code, _, err = cli(capsys, "jobs", "list")
    assert code == 1 and "HTTP 401" in err


def test_version_and_usage_through_the_entry_point(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")} | {"MEDSYNTH_CONFIG": str(tmp_path / "none.toml")}

    def medsynth(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medsynth.local.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    version = medsynth("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"medsynth {__version__}"
    usage = medsynth("cohorts", "download")
    assert usage.returncode == 2 and "the following arguments are required: id" in usage.stderr


def test_lists_follow_next_cursor_and_link_headers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """The paging protocol the api's lists are taking up (``limit``, ``cursor``; ``next_cursor`` in the
    body or ``Link: rel="next"``), served by a stand-in until the api's own routes page."""
    stub = FastAPI()
    jobs = [{"job_id": f"j{i}", "kind": "evaluate", "state": "queued", "progress": 0.0, "message": "", "created_at": "2026-01-01T00:00:00"}
            for i in range(5)]
    seen: list[dict] = []

    @stub.get("/v1/jobs")
    def page(response: Response, cursor: int = 0, limit: int = 2) -> dict:
        seen.append({"cursor": cursor, "limit": limit})
        body = {"jobs": jobs[cursor:cursor + limit], "count": len(jobs[cursor:cursor + limit])}
        if cursor + limit < len(jobs):
            if cursor == 0:
                body["next_cursor"] = str(cursor + limit)
            else:
                response.headers["link"] = f'</v1/jobs?cursor={cursor + limit}&limit={limit}>; rel="next"'
        return body

    with live_server(stub) as url:
        for name in [n for n in os.environ if n.startswith("MEDSYNTH_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("MEDSYNTH_CONFIG", str(tmp_path / "none.toml"))
        monkeypatch.setenv("MEDSYNTH_API_KEY", "msk_a_b")
        code, out, err = cli(capsys, "jobs", "list", "--json", "--url", url)
        assert code == 0, err
        assert [j["job_id"] for j in json.loads(out)["jobs"]] == [f"j{i}" for i in range(5)]
        assert [s["cursor"] for s in seen] == [0, 2, 4]
        code, out, _ = cli(capsys, "jobs", "list", "--url", url, "--limit", "3")
        assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["j0", "j1", "j2"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"detail": "cohort c is running, not ready"}, "cohort c is running, not ready"),
        ({"detail": [{"loc": ["body", "count"], "msg": "Input should be greater than or equal to 1", "type": "x"}]},
         "count: Input should be greater than or equal to 1"),
        ({"type": "urn:medsynth:problem:conflict", "title": "Conflict with the current state", "status": 409,
          "detail": "cohort c is running, not ready", "instance": "/v1/cohorts/c/download"}, "cohort c is running, not ready"),
        ({"title": "Request validation failed", "status": 422, "detail": "body.count: Input should be greater than or equal to 1",
          "errors": [{"loc": ["body", "count"], "msg": "Input should be greater than or equal to 1", "type": "greater_than_equal"}]},
         "body.count: Input should be greater than or equal to 1"),  # the errors the detail already says are not repeated
        ({"title": "Invalid input", "status": 422, "detail": "the request body is invalid",
          "errors": [{"pointer": "#/release/threshold_ratio", "detail": "should be less than 1"},
                     {"loc": ["query", "limit"], "msg": "too big"}]},
         "the request body is invalid; release.threshold_ratio: should be less than 1; query.limit: too big"),
        ({"title": "Not Found"}, "Not Found"),
    ],
)  # fmt: skip
def test_problem_messages_today_and_as_rfc_9457(body: dict, expected: str) -> None:
    assert problem_message(httpx.Response(400, json=body)) == expected
    assert problem_message(httpx.Response(502, text="Bad gateway\n")) == "Bad gateway"


def test_the_demo_says_where_its_cohort_is_and_how_to_get_it_again(tmp_path: Path) -> None:
    cohort = {"job_id": "sample-cohort-1a2b", "spec": {"count": 512},
              "result_keys": {"manifest": "cohorts/sample-cohort-1a2b/manifest.json"}}
    lines = cohort_lines(cohort, Settings(home=tmp_path))
    assert lines[0] == f"cohort: sample-cohort-1a2b (512 samples) in {tmp_path.resolve()}/store/cohorts/sample-cohort-1a2b/"
    assert "  medsynth stack up" in lines and lines[-1].startswith("  medsynth cohorts download sample-cohort-1a2b ")
    assert cohort_lines(cohort, Settings(home=tmp_path, store="s3"))[0].endswith("in s3://medsynth/cohorts/sample-cohort-1a2b/")
