"""Cursor pagination, the same on every list route: ``?limit=`` (default :data:`DEFAULT_LIMIT`, at most
:data:`MAX_LIMIT`) and ``?cursor=`` in; one page, ``next_cursor`` (null on the last page) and a
``Link: <…>; rel="next"`` header out.

A list is read in the order of its keys in the store (ids that sort by creation time, names, numbers),
and a cursor is the key of the last item given, opaque to clients: a page starts after it, so items
made meanwhile neither shift a page nor repeat one. Each route's source yields ``(key, item)`` from the
first key after the cursor, reading an item's record only when it is reached — one page of records
(and one more, to know whether there is a next page) rather than all of them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, Field

from medsynth.core.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class Page(BaseModel):
    """What every list answer has besides its items."""

    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last page.")


class PageRequest:
    """The page a list request asks for (a route's dependency, :data:`PageDep`)."""

    def __init__(self, request: Request, response: Response, limit: int, cursor: str | None) -> None:
        self.request, self.response, self.limit = request, response, limit
        self.route = getattr(request.scope.get("route"), "path", request.url.path)
        self.after = None if cursor is None else _decode(cursor, self.route)

    def take(self, items: Iterable[tuple[str, T]]) -> tuple[list[T], str | None]:
        """The first :attr:`limit` of ``items`` (``(key, item)`` in key order, after :attr:`after`), and the
        cursor of the next page (None: no more), which the answer's ``Link`` header carries too."""
        page: list[T] = []
        last: str | None = None
        for key, item in items:
            if self.after is not None and key <= self.after:
                continue  # a source that cannot start after the cursor itself
            if len(page) == self.limit:
                cursor = _encode(last, self.route)
                url = self.request.url.include_query_params(cursor=cursor)
                self.response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
                return page, cursor
            page.append(item)
            last = key
        return page, None


def _encode(key: str | None, route: str) -> str:
    raw = json.dumps({"after": key, "route": route}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, route: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after, given_for = data["after"], data["route"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidInput(f"cursor {cursor[:100]!r} is not one this api gave out; pass next_cursor of a previous page") from None
    if given_for != route or not isinstance(after, str):
        raise InvalidInput(f"cursor {cursor[:100]!r} is the next page of another list ({given_for}), not of {route}")
    return after


def page_request(
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="The most items of the page.")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(min_length=1, max_length=2000,
                                        description="next_cursor of the previous page; none for the first.")] = None,
) -> PageRequest:
    return PageRequest(request, response, limit, cursor)


PageDep = Annotated[PageRequest, Depends(page_request)]
