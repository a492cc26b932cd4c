"""ASGI middleware: request ids and a hard limit on request body size."""

from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-ID if well-formed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Attach the id to the request state and the response headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class NulRefusalMiddleware:
    """Refuses a NUL (``%00``) in the path or query string with 422 before any handler.

    PostgreSQL text cannot hold NUL, so a filter such as ``/queries?site=%00`` would
    otherwise fail in the database; no identifier or filter of the API contains one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 422 for a NUL in the URL; pass everything else on."""
        if scope["type"] == "http":
            where = None
            if "\x00" in scope.get("path", ""):
                where = "path"
            elif b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
                where = "query"
            if where is not None:
                problem = {
                    "path": "",
                    "location": where,
                    "message": "NUL characters (\\u0000) are not accepted",
                }
                await _respond(send, 422, {"detail": [problem]})
                return
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, body: object) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before any handler sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length, then count the bytes actually streamed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await _too_large(send, self.max_bytes)


class _BodyTooLargeError(Exception):
    pass


async def _too_large(send: Send, max_bytes: int) -> None:
    body = f'{{"detail":"request body larger than {max_bytes} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DatabaseBreaker:
    """Remembers a recent database outage so requests fail fast instead of each waiting."""

    def __init__(self, cooldown_seconds: float = 3.0) -> None:
        self.cooldown_seconds = cooldown_seconds
        self._open_until = 0.0

    def trip(self) -> None:
        """An outage was just seen: refuse requests for the cooldown."""
        self._open_until = time.monotonic() + self.cooldown_seconds

    @property
    def is_open(self) -> bool:
        """Whether requests are being refused right now."""
        return time.monotonic() < self._open_until


class DatabaseBreakerMiddleware:
    """Answers 503 at once while the breaker is open; the next request after it probes."""

    _ALWAYS = ("/docs", "/openapi.json", "/redoc")

    def __init__(self, app: ASGIApp, breaker: DatabaseBreaker) -> None:
        self.app = app
        self.breaker = breaker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Short-circuit API requests during a known outage."""
        if (
            scope["type"] == "http"
            and self.breaker.is_open
            and not str(scope.get("path", "")).startswith(self._ALWAYS)
        ):
            body = b'{"detail":"the database is unavailable; try again"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"3")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
