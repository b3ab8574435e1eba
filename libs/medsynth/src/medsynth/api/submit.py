"""What every route that creates a job or a study shares: ``202 Accepted`` with ``Location`` (the URL
to poll), and ``Idempotency-Key`` (the same key and request again → the same job, no second
submission; the same key with another request → 422)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, Response
from google.protobuf.message import Message

from medsynth.api.deps import PrincipalDep, StoreDep
from medsynth.api.schemas import JobPublic
from medsynth.bus.messages import JobKind
from medsynth.jobs.idempotency import IdempotencyKeys, request_digest
from medsynth.jobs.records import new_job_id
from medsynth.jobs.service import JobService

T = TypeVar("T")

IDEMPOTENCY_KEY = "Idempotency-Key"
#: The header a replayed answer carries (Stripe's name): the resource was made by an earlier request.
REPLAYED = "Idempotent-Replayed"

#: The OpenAPI entry of a 202 that made a job or study (merged into the route's own).
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Accepted: the job (or study) is recorded; poll Location. Sent again with the same Idempotency-Key "
                       "and request, the same resource (Idempotent-Replayed: true) and no second submission.",
        "headers": {
            "Location": {"description": "The URL of the resource to poll.", "schema": {"type": "string"}},
            REPLAYED: {"description": "true when an earlier request with this Idempotency-Key made the resource.",
                       "schema": {"type": "string", "enum": ["true"]}},
        },
    },
    409: {"description": "The request collides with existing state, or the first request with this Idempotency-Key is "
                         "still being served (idempotency-key-in-use; Retry-After)."},
    422: {"description": "The request is invalid (the detail names the field or the problem), or its Idempotency-Key came "
                         "before with another request (idempotency-key-reused)."},
}


class Submission:
    """The request's idempotency key and what identifies the request (a route's dependency)."""

    def __init__(self, response: Response, keys: IdempotencyKeys, caller: str, key: str | None, digest: str) -> None:
        self.response = response
        self.keys, self.caller, self.key, self.digest = keys, caller, key, digest

    def once(self, new_id: Callable[[], str], create: Callable[[str], T], existing: Callable[[str], T],
             location: Callable[[T], str]) -> T:
        """``create(new_id())``, or with a key seen before, the resource it made; ``Location`` says where it is."""
        if self.key is None:
            made, replayed = create(new_id()), False
        else:
            made, replayed = self.keys.once(self.caller, self.key, self.digest, new_id, create, existing)
        self.response.headers["Location"] = location(made)
        if replayed:
            self.response.headers[REPLAYED] = "true"
        return made

    def job(self, jobs: JobService, kind: JobKind, command: Callable[[], Message], path: str) -> JobPublic:
        """Submit a job of ``kind`` whose command ``command()`` builds (and checks); ``Location`` is
        ``path`` followed by the job's id (``/v1/cohorts/``…)."""
        made = self.once(lambda: new_job_id(kind), lambda job_id: jobs.submit(kind, command(), job_id=job_id),
                         lambda job_id: jobs.records.get(job_id), lambda record: f"{path}{record.job_id}")
        return JobPublic.of(made)


async def submission(
    request: Request,
    response: Response,
    store: StoreDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(
        alias=IDEMPOTENCY_KEY, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="A key of the client's choosing (a UUID) that makes the request safe to send again: the same key "
                    "and request → the job (or study) the first one made; another request with it → 422. Per caller "
                    "and project, remembered 24 h.")] = None,
) -> Submission:
    body = await request.body()  # read and kept by FastAPI already: the route's body
    return Submission(response, IdempotencyKeys(store), principal.actor, idempotency_key,
                      request_digest(request.method, request.url.path, body))


SubmissionDep = Annotated[Submission, Depends(submission)]
