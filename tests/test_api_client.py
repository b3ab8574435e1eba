"""The clients' one retry policy (medsynth.local.api_client): Retry-After read as seconds or as an
HTTP-date, 429 and 503 waited out with jitter within a deadline, a recorded job's 503 never resubmitted.
The network is httpx's MockTransport, the clock and the sleep are the test's; the last test runs the
real api app with its broker unreachable."""

from __future__ import annotations

import random
import socket
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from medsynth.local.api_client import RetryingTransport, RetryPolicy, api_client, job_id_of, retried, retry_after_s

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0), ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),
     ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0), ("Sat Mar  1 12:00:05 2025", 5.0),
     ("-5", None), ("1.5", None), ("soon", None), ("", None), (None, None), ("٣", None)],
)  # fmt: skip
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_s(header, now=NOW) == seconds


class Clock:
    """A monotonic clock that only the fake sleep moves."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def transport(answers: list, policy: RetryPolicy = RetryPolicy()) -> tuple[RetryingTransport, Clock, list[httpx.Request]]:
    """A retrying transport over a network that gives ``answers`` in turn (a Response, or an exception
    to raise); the last one repeats."""
    sent: list[httpx.Request] = []

    def network(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        request.read()  # the body is sent each time
        answer = answers[min(len(sent) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = Clock()
    return RetryingTransport(policy, httpx.MockTransport(network), sleep=clock.sleep, clock=clock, rng=random.Random(0)), clock, sent


def limited(retry_after: str | None = "2") -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": retry_after} if retry_after else {}, json={"detail": "over the rate"})


def test_a_429_is_waited_out_for_its_retry_after_with_jitter_and_sent_again() -> None:
    retrying, clock, sent = transport([limited("2"), limited("2"), httpx.Response(201, json={"scan_id": "s"})])
    with httpx.Client(transport=retrying) as client:
        r = client.post("http://ingest/v1/datasets/d/scans", files={"image": ("a.nii.gz", b"voxels")})
    assert r.status_code == 201 and len(sent) == 3
    assert all(b"voxels" in s.content for s in sent)  # the whole upload each time
    assert len(clock.sleeps) == 2 and all(2.0 <= w <= 2.0 * (1 + RetryPolicy().jitter) for w in clock.sleeps), clock.sleeps
    assert len(set(clock.sleeps)) == 2  # jitter: concurrent workers do not come back at once
    assert retrying.retried == {"429": 2}


def test_an_http_date_retry_after_is_honoured() -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    retrying, clock, _ = transport([limited(when), httpx.Response(200, json={})], RetryPolicy(jitter=0))
    with httpx.Client(transport=retrying) as client:
        assert client.get("http://api/v1/jobs").status_code == 200
    assert 28 <= clock.sleeps[0] <= 30, clock.sleeps


def test_without_retry_after_the_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_s=1, max_backoff_s=4, jitter=0)
    retrying, clock, _ = transport([limited(None)] * 5 + [httpx.Response(200, json={})], policy)
    with httpx.Client(transport=retrying) as client:
        assert client.get("http://api/v1/jobs").status_code == 200
    assert clock.sleeps == [1, 2, 4, 4, 4]


def test_the_retries_stop_at_the_deadline_and_the_caller_gets_the_last_answer() -> None:
    retrying, clock, sent = transport([limited("5")], RetryPolicy(deadline_s=12, jitter=0))
    with httpx.Client(transport=retrying) as client:
        r = client.get("http://api/v1/jobs")
    assert r.status_code == 429 and r.json()["detail"] == "over the rate"
    assert clock.sleeps == [5, 5] and len(sent) == 3  # a third wait would end past 12 s: not started
    retrying, clock, sent = transport([limited("3600")])
    with httpx.Client(transport=retrying) as client:
        assert client.get("http://api/v1/jobs").status_code == 429
    assert clock.sleeps == [] and len(sent) == 1  # an hour is past the deadline: answered at once
    retrying, clock, sent = transport([limited("1")], RetryPolicy(attempts=4))
    with httpx.Client(transport=retrying) as client:
        assert client.get("http://api/v1/jobs").status_code == 429
    assert len(sent) == 4


def deferred(job_id: str = "prepare-dataset-abc") -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": "135", "Location": f"/v1/jobs/{job_id}"},
                          json={"detail": f"job {job_id} is recorded and queued, … Do not resubmit: follow GET /v1/jobs/{job_id}."})


def test_a_503_is_sent_again_only_where_that_is_safe() -> None:
    unavailable = httpx.Response(503, headers={"Retry-After": "1"}, json={"detail": "the audit trail cannot be written now"})
    for method, policy, sends in (("GET", RetryPolicy(), 2), ("POST", RetryPolicy(), 1), ("POST", RetryPolicy(idempotent_posts=True), 2)):
        retrying, _, sent = transport([unavailable, httpx.Response(200, json={})], policy)
        with httpx.Client(transport=retrying) as client:
            client.request(method, "http://api/v1/x")
        assert len(sent) == sends, (method, policy)
    for policy in (RetryPolicy(), RetryPolicy(idempotent_posts=True)):  # a recorded job: never a second one
        retrying, clock, sent = transport([deferred(), httpx.Response(202, json={"job_id": "another"})], policy)
        with httpx.Client(transport=retrying) as client:
            r = client.post("http://api/v1/datasets/d/views", json={"size": 16})
        assert len(sent) == 1 and clock.sleeps == [] and job_id_of(r) == "prepare-dataset-abc"


def test_job_id_of_a_submission() -> None:
    assert job_id_of(httpx.Response(202, json={"job_id": "j1"})) == "j1"
    assert job_id_of(deferred("j2")) == "j2"
    assert job_id_of(httpx.Response(503, json={"detail": "the store cannot be reached"})) is None
    assert job_id_of(httpx.Response(503, headers={"Location": "/v1/jobs/"})) is None
    assert job_id_of(httpx.Response(422, json={"detail": "bad"})) is None


def test_connection_errors_are_retried_where_nothing_could_have_been_done() -> None:
    refused = httpx.ConnectError("connection refused")
    retrying, clock, sent = transport([refused, refused, httpx.Response(202, json={"job_id": "j"})])
    with httpx.Client(transport=retrying) as client:
        assert client.post("http://api/v1/cohorts", json={}).status_code == 202
    assert len(sent) == 3 and retrying.retried == {"ConnectError": 2}
    cut = httpx.RemoteProtocolError("server disconnected")
    retrying, _, sent = transport([cut, httpx.Response(202, json={"job_id": "j"})])
    with httpx.Client(transport=retrying) as client, pytest.raises(httpx.RemoteProtocolError):
        client.post("http://api/v1/cohorts", json={})  # it may have made the job: not sent twice
    assert len(sent) == 1
    retrying, _, sent = transport([cut, httpx.Response(201, json={})], RetryPolicy(idempotent_posts=True))
    with httpx.Client(transport=retrying) as client:
        assert client.post("http://ingest/v1/datasets/d/scans", files={"image": ("a", b"x")}).status_code == 201
    retrying, _, sent = transport([refused], RetryPolicy(deadline_s=3))
    with httpx.Client(transport=retrying) as client, pytest.raises(httpx.ConnectError):
        client.get("http://api/v1/jobs")
    assert 1 < len(sent) < 10


def test_api_client_sends_the_key_and_counts_its_retries() -> None:
    retrying, _, sent = transport([limited("0"), httpx.Response(200, json={})])
    quick = RetryPolicy(backoff_s=0.01, max_backoff_s=0.01)
    with api_client("http://api", api_key="msk_k_s", retry=quick, transport=retrying.inner) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert retried(client) == {"429": 1}
    assert sent[0].headers["authorization"] == "Bearer msk_k_s" and sent[0].url == "http://api/v1/jobs"


def test_a_job_recorded_while_the_broker_is_down_is_followed_not_resubmitted(platform_settings, tmp_path: Path) -> None:
    from medsynth.api.app import create_api_app
    from medsynth.datasets.ingest import Upload, ingest_scan
    from medsynth.datasets.phantoms import write_phantom_dataset
    from medsynth.jobs.records import JobRecords, JobState
    from medsynth.local.demo import submit_job
    from medsynth.store.local import LocalStore

    from platform_fixtures import api_key, live_server

    write_phantom_dataset(tmp_path / "msd", n=1, seed=1, shape=(16, 16, 6))
    store = LocalStore(platform_settings.local_store_root)
    image = (tmp_path / "msd" / "imagesTr" / "phantom_000.nii.gz").read_bytes()
    ingest_scan(store, "d", "p0", Upload("phantom_000.nii.gz", image), None, max_voxels=10**6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = platform_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{closed}", "publish_timeout_s": 1.0})
    lines: list[str] = []
    with live_server(create_api_app(down, reconcile=False)) as url, api_client(url, api_key=api_key(down, "researcher")) as api:
        job_id = submit_job(api, "/v1/datasets/d/views", {"size": 16}, "prepare views", echo=lines.append)
        assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    assert [r.job_id for r in JobRecords(store).all()] == [job_id]  # one job: the 503 was not resubmitted
    assert JobRecords(store).get(job_id).state is JobState.queued and "not resubmitting" in lines[0]
