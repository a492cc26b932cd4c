"""The one place where domain errors become HTTP statuses."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy.exc
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecrf.domain.errors import (
    AccountLockedError,
    ConflictError,
    EcrfError,
    ForbiddenError,
    HiddenError,
    InvalidInputError,
    LockedError,
    NotAuthenticatedError,
    NotFoundError,
    UnavailableError,
)
from ecrf.domain.patch import escape_pointer_token

logger = logging.getLogger("ecrf.api")

STATUS_OF: dict[type[EcrfError], int] = {
    NotAuthenticatedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    InvalidInputError: 422,
    LockedError: 423,
    AccountLockedError: 423,
    UnavailableError: 503,
}


def status_of(error: EcrfError) -> int:
    """The HTTP status of a domain error (its nearest mapped base class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


def _domain_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, EcrfError)
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    detail: Any = str(error)
    if isinstance(error, InvalidInputError):
        detail = [{"path": p.path, "message": p.message} for p in error.problems]
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _request_invalid(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ())]
        where = location[0] if location else "body"
        pointer = "".join(f"/{escape_pointer_token(part)}" for part in location[1:])
        message = str(item.get("msg", "invalid"))
        if item.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        problems.append({"path": pointer, "location": where, "message": message})
    return JSONResponse({"detail": problems}, status_code=422)


def _database_down(request: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", error)
    breaker = getattr(request.app.state, "breaker", None)
    if breaker is not None:
        breaker.trip()
    return JSONResponse(
        {"detail": "the database is unavailable; try again"},
        status_code=503,
        headers={"Retry-After": "3"},
    )


def _domain_or_outage(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, UnavailableError):
        return _database_down(request, error)
    if isinstance(error, REFUSALS):
        _record_refusal(request, error)
    return _domain_error(request, error)


REFUSALS = (NotAuthenticatedError, ForbiddenError, AccountLockedError, HiddenError)


class RefusalBudget:
    """At most ``per_minute`` takes in any rolling minute (thread-safe)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] > 60:
                self._times.popleft()
            if len(self._times) >= self.per_minute:
                return False
            self._times.append(now)
            return True


ANONYMOUS_REFUSALS_PER_MINUTE = 60


def _record_refusal(request: Request, error: EcrfError) -> None:
    """Refused requests are evidence (11.10(d)): who tried what, and why it was refused."""
    application = getattr(request.app.state, "application", None)
    if application is None:
        return
    username = getattr(request.state, "username", "") or "anonymous"
    # One budget per app (installed with the handlers), so apps in one process never
    # spend each other's.
    budget: RefusalBudget = request.app.state.anonymous_refusals
    if username == "anonymous" and not budget.take():
        # Without a login anyone could grow the permanent log; past a budget per minute
        # refusals are only logged.
        logger.warning("refused (not recorded, budget spent): %s %s", request.method, error)
        return
    application.record_refusal(
        username,
        request.method,
        request.url.path,
        status_of(error),
        f"{type(error).__name__}: {error}",
        str(getattr(request.state, "request_id", "")),
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400:
        # FastAPI answers 400 for bodies it cannot decode (e.g. not UTF-8); for clients
        # every malformed input is a 422 with the problem located.
        problem = {"path": "", "location": "body", "message": "request body could not be parsed"}
        return JSONResponse({"detail": [problem]}, status_code=422)
    return await http_exception_handler(request, error)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mappings on an app."""
    app.state.anonymous_refusals = RefusalBudget(per_minute=ANONYMOUS_REFUSALS_PER_MINUTE)
    app.add_exception_handler(EcrfError, _domain_or_outage)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Connection failures from every layer that talks to the database: the event
    # store (eventsourcing), the read models (SQLAlchemy), raw driver and pool errors.
    for outage in (
        OperationalError,
        InterfaceError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,
        psycopg.OperationalError,
        psycopg_pool.PoolTimeout,
    ):
        app.add_exception_handler(outage, _database_down)
