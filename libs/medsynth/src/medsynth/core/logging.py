"""One log format for every process: time, level, service, logger, message — and no secrets.

Every record passes :class:`RedactSecrets` before it is written: the values of query parameters that
carry credentials (a reader's link is ``…/read?token=msr_…``; uvicorn's access log writes each
request's path with its query) and medsynth's own tokens wherever they appear (``msr_…`` reader
tokens; ``msk_<id>_<secret>`` API keys keep their id) are replaced by ``[redacted]``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import IO

REDACTED = "[redacted]"
#: Query parameters whose values are credentials.
SECRET_PARAMS = ("token", "access_token", "id_token", "api_key", "apikey", "key", "password", "secret",
                 "x-amz-signature", "x-amz-credential", "x-amz-security-token")
_SECRET_QUERY = re.compile(r"([?&;](?:%s)=)[^&;\s\"'#]*" % "|".join(map(re.escape, SECRET_PARAMS)), re.IGNORECASE)
# medsynth.studies.reader.TOKEN_PREFIX and medsynth.auth.keys.TOKEN_PREFIX (this module imports nothing of medsynth)
_READER_TOKEN = re.compile(r"\bmsr_[A-Za-z0-9_\-]+")
_API_KEY = re.compile(r"\b(msk_[0-9a-f]+_)[A-Za-z0-9_\-]+")
#: Loggers that write requests' paths with their query strings (uvicorn's access log).
ACCESS_LOGGERS = ("uvicorn.access",)


def redact(text: str) -> str:
    """``text`` with every secret query value and medsynth token replaced by :data:`REDACTED`."""
    text = _SECRET_QUERY.sub(rf"\1{REDACTED}", text)
    text = _READER_TOKEN.sub(f"msr_{REDACTED}", text)
    return _API_KEY.sub(rf"\1{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Redacts a record's message and string arguments in place (keeping their number, so formatters
    that unpack the arguments, as uvicorn's access formatter does, still work); a message that still
    shows a secret through another argument (a URL object) is replaced by its redacted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if record.args:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # a malformed call: leave it to the handler to report
                return True
            if (clean := redact(message)) != message:
                record.msg, record.args = clean, ()
        return True


def configure_logging(service: str, *, stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (default stderr) in the one format, through :class:`RedactSecrets`."""
    level = os.environ.get("MEDSYNTH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        stream=stream,
        force=True,
    )
    redactor = RedactSecrets()
    for handler in logging.getLogger().handlers:  # every record that reaches the root, from any logger
        handler.addFilter(redactor)
    for name in ACCESS_LOGGERS:  # and at the source, should a server give them handlers of their own
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(redactor)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
