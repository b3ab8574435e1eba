"""Validation of user-chosen identifiers that end up inside object-store keys."""

from __future__ import annotations

import re

from medsynth.core.errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a safe identifier, else raise :class:`InvalidInput`.

    Safe means 1-64 characters of letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
    digit, and no ``..`` — so it can never climb out of, or add a level to, a store key.
    """
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise InvalidInput(
            f"{what} must be 1-64 characters of letters, digits, '.', '_' or '-', start with a letter "
            f"or digit and contain no '..' or path separators, got {value!r}."
        )
    return value


def sortable_suffix() -> str:
    """24 hex digits that sort by creation time: the milliseconds since the epoch (12 digits, good
    until the year 10889), then 48 random bits. Ids made of a fixed prefix and this list, in the
    store's key order, oldest first — so that a listing can be paged in key order without reading
    every record to sort it."""
    import secrets
    import time

    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"
