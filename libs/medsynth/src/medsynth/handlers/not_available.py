"""The handler of job kinds this build cannot run yet: fail at once, with a message, to dead letters.

The api does not create such jobs; a command that arrives anyway (an older or newer producer) is
failed clearly instead of sitting unconsumed on its topic.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from medsynth import __version__
from medsynth.core.errors import PermanentJobError
from medsynth.jobs.worker import JobContext


def not_available(spec: Message, ctx: JobContext) -> Mapping[str, str]:
    raise PermanentJobError(f"{ctx.record.kind.value} jobs are not available in medsynth {__version__}")
