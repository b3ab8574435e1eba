"""The one way this project's clients talk to the REST api: :func:`api_client`, an ``httpx.Client``
whose transport answers the services' "not now" by waiting and sending the request again.

Used by the ingest and study clients, the demo and the benchmarks. What is sent again:

* **429** (over the caller's request or upload rate): always — the guard refuses before the route
  does anything.
* **503** (the store, the broker or the audit trail cannot be reached now): a GET, HEAD, PUT, DELETE
  or OPTIONS, and a POST of a client made with ``idempotent_posts=True`` (uploads: the same image sent
  twice is a 409, not a second scan). A POST that makes a job is never sent again: its 503 may mean
  "recorded and queued, the broker is down" (``Location: /v1/jobs/<id>``), and a second POST would
  make a second job — :func:`job_id_of` gives the job to follow instead.
* **A connection that could not be opened**: always (nothing was sent); one cut while the request
  or its answer was on the wire: only where a 503 would be sent again.

Each wait is the answer's ``Retry-After`` (delay-seconds or an HTTP-date), else (or for a 0) an
exponential backoff, stretched by a random jitter so that concurrent workers do not come back at
once. One request's retries stop at :attr:`RetryPolicy.deadline_s` (or after
:attr:`RetryPolicy.attempts`); the caller then gets the last answer as it came (or the last
connection error).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

RETRIED_STATUSES = frozenset({429, 503})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
JOBS_PREFIX = "/v1/jobs/"


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request keeps trying. ``deadline_s`` bounds the whole of it (waits and attempts);
    a wait that would end past it is not started."""

    deadline_s: float = 600.0
    attempts: int = 100          # sends of one request, the first included
    backoff_s: float = 0.5       # the first wait where the answer names none; doubled each time
    max_backoff_s: float = 30.0  # ... up to this
    jitter: float = 0.25         # each wait is stretched by a random 0..jitter of itself
    idempotent_posts: bool = False

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.attempts < 1 or self.backoff_s <= 0 or self.max_backoff_s < self.backoff_s or self.jitter < 0:
            raise ValueError(f"retry policy out of range: {self}")


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds (``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``; a date in the past is 0). ``None`` when absent or unreadable."""
    if value is None or not (value := value.strip()):
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


class RetryingTransport(httpx.BaseTransport):
    """Sends a request again after a 429 or 503 as the module says. ``retried`` counts the resends
    by cause (a status code, or an exception's name), for benchmarks to report."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), inner: httpx.BaseTransport | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.HTTPTransport()
        self.sleep, self.clock = sleep, clock
        self.rng = rng or random.Random()
        self.retried: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        deadline = self.clock() + policy.deadline_s
        resendable = request.method in SAFE_METHODS or (request.method == "POST" and policy.idempotent_posts)
        for attempt in range(1, policy.attempts + 1):
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the service
                wait, cause, failure = self._backoff(attempt), type(exc).__name__, exc
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                if not resendable:
                    raise
                wait, cause, failure = self._backoff(attempt), type(exc).__name__, exc
            else:
                wait, cause, failure = self._wait_for(response, resendable, attempt), str(response.status_code), None
                if wait is None:
                    return response
            wait *= 1 + self.rng.uniform(0, policy.jitter)
            if attempt == policy.attempts or self.clock() + wait > deadline:
                if failure is not None:
                    raise failure
                return response
            if failure is None:
                response.close()
            with self._lock:
                self.retried[cause] += 1
            self.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait_for(self, response: httpx.Response, resendable: bool, attempt: int) -> float | None:
        """Seconds to wait before sending the request again after ``response``; None: do not."""
        if response.status_code not in RETRIED_STATUSES:
            return None
        if response.status_code == 503 and (not resendable or job_path(response) is not None):
            return None
        told = retry_after_s(response.headers.get("retry-after"))
        return told if told else self._backoff(attempt)  # none, unreadable or 0: the backoff (no tight loop)

    def _backoff(self, attempt: int) -> float:
        return min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (attempt - 1))

    def close(self) -> None:
        self.inner.close()


def api_client(base_url: str = "", *, api_key: str | None = None, timeout: float = 120.0,
               retry: RetryPolicy = RetryPolicy(), transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An ``httpx.Client`` for the api or ingest service at ``base_url`` (empty: absolute URLs),
    sending ``Authorization: Bearer <api_key>``, retrying as the module says. ``transport`` replaces
    the network under the retries (tests)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base_url, timeout=timeout, headers=headers,
                        transport=RetryingTransport(retry, transport))


def retried(client: httpx.Client) -> Counter[str]:
    """The resends of a client made by :func:`api_client`, by cause (``"429"``, ``"ConnectError"``…)."""
    transport = client._transport  # httpx keeps the mounted transport here
    return Counter(transport.retried) if isinstance(transport, RetryingTransport) else Counter()


def job_path(response: httpx.Response) -> str | None:
    """The ``/v1/jobs/<id>`` a 503 names in ``Location``: the job is recorded and queued and will be
    published when the broker is back — follow it, do not resubmit."""
    location = response.headers.get("location", "")
    path = httpx.URL(location).path if location else ""
    return path if path.startswith(JOBS_PREFIX) and len(path) > len(JOBS_PREFIX) else None


def job_id_of(response: httpx.Response) -> str | None:
    """The job a submission made: from a 202's body, or from a 503 that recorded it (:func:`job_path`);
    None when the request made no job."""
    if response.status_code == 202:
        return response.json()["job_id"]
    if response.status_code == 503 and (path := job_path(response)) is not None:
        return path[len(JOBS_PREFIX):]
    return None
