"""One root exception class; every error medsynth raises on purpose derives from it."""

from __future__ import annotations


class MedsynthError(Exception):
    """Root of all medsynth errors."""


class InvalidInput(MedsynthError):
    """User-supplied data (a file, a name, a spec) is unusable; the message names the problem."""


class TooLarge(InvalidInput):
    """An upload or volume exceeds a configured size limit."""


class Conflict(MedsynthError):
    """The request collides with existing state (a duplicate scan, a concurrent write)."""


class NotFound(MedsynthError):
    """A named object (dataset, job, key) does not exist."""


class StoreError(MedsynthError):
    """The object store failed or is unreachable."""


class JobCancelled(MedsynthError):
    """Raised inside a handler when its job was cancelled; the worker records `cancelled`."""


class PermanentJobError(MedsynthError):
    """A handler failure that retrying cannot fix; the job fails and is dead-lettered at once."""
