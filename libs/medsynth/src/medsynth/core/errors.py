"""One root exception class; every error medsynth raises on purpose derives from it."""

from __future__ import annotations

from pydantic import ValidationError


class MedsynthError(Exception):
    """Root of all medsynth errors."""


class InvalidInput(MedsynthError):
    """User-supplied data (a file, a name, a spec) is unusable; the message names the problem."""


class TooLarge(InvalidInput):
    """An upload or volume exceeds a configured size limit."""


class UnsupportedMediaType(InvalidInput):
    """The request body is of a content type the route does not take (e.g. a STOW-RS request that is not DICOM)."""


class Conflict(MedsynthError):
    """The request collides with existing state (a duplicate scan, a concurrent write)."""


class IdempotencyKeyReused(InvalidInput):
    """An ``Idempotency-Key`` sent again with a different request than the one it first came with."""


class IdempotencyKeyInUse(Conflict):
    """The first request with this ``Idempotency-Key`` is still being served; ``retry_after_s`` says when to ask again."""

    retry_after_s = 1


class NotFound(MedsynthError):
    """A named object (dataset, job, key) does not exist."""


class PeerUnavailable(MedsynthError):
    """A remote node medsynth was asked to talk to (a DICOM destination) cannot be reached or refuses."""


class StoreError(MedsynthError):
    """The object store failed or is unreachable."""


class JobCancelled(MedsynthError):
    """Raised inside a handler when its job was cancelled; the worker records `cancelled`."""


class PermanentJobError(MedsynthError):
    """A handler failure that retrying cannot fix; the job fails and is dead-lettered at once."""


class Unauthorized(MedsynthError):
    """No credentials, or credentials that do not prove who the caller is (expired, forged, revoked)."""


class Forbidden(MedsynthError):
    """The caller is known but its role or project does not allow the request."""


class Busy(MedsynthError):
    """The service is at its limit of concurrent work (e.g. large uploads in memory); ``retry_after_s``
    says when to try again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s + 0.999))


class RateLimited(MedsynthError):
    """Too many requests from one caller; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s + 0.999))


def describe_invalid(exc: ValidationError, *, skip: int = 0, whole: str = "value") -> str:
    """Pydantic's errors as ``field: message; ...``: each field at fault, by its dotted path (``skip``
    drops leading parts, e.g. a union's tag; an error of the value as a whole is named ``whole``)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'][skip:]) or whole}: {e['msg']}" for e in exc.errors())
