"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from ecrf.api.errors import install_error_handlers
from ecrf.api.middleware import (
    BodyLimitMiddleware,
    DatabaseBreaker,
    DatabaseBreakerMiddleware,
    NulRefusalMiddleware,
    RequestIdMiddleware,
)
from ecrf.api.models import ERROR_RESPONSES
from ecrf.api.routers import (
    auth,
    cohorts,
    exports,
    ledger,
    monitoring,
    reports,
    study,
    subjects,
    users,
)
from ecrf.application import EcrfApplication
from ecrf.config import Settings
from projections.registry import build_runner

# Entry submissions running at once in this process. Every one ends in the store's single
# write transaction and shares one GIL, so more threads only queue inside SQLite and the
# interpreter: on the 2-core bench machine 2 gave 447 req/s and p99 88 ms at 32 clients,
# the thread pool's default 40 gave 364 req/s and p99 187 ms (bench/results/submit-*.md).
ENTRY_WRITERS = 2


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API around one application instance and its projections."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        application = EcrfApplication(settings)
        runner = build_runner(application, settings)
        api.state.application = application
        api.state.projections = runner
        api.state.entry_writers = anyio.CapacityLimiter(ENTRY_WRITERS)
        # The key is made on first start; the follower seals every N events.
        application.ledger.start()
        if settings.run_projections:
            runner.start()
        try:
            yield
        finally:
            application.ledger.stop()  # records the shutdown seal
            runner.stop()
            runner.engine.dispose()
            application.close()

    api = FastAPI(
        title="ecrf",
        version="0.1.0",
        summary="Event-sourced electronic case report forms (21 CFR Part 11 style audit)",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(api)
    api.state.breaker = DatabaseBreaker()
    api.add_middleware(DatabaseBreakerMiddleware, breaker=api.state.breaker)
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    api.add_middleware(NulRefusalMiddleware)
    api.add_middleware(RequestIdMiddleware)
    for module in (auth, users, study, subjects, monitoring, ledger, reports, cohorts, exports):
        api.include_router(module.router)
    return api
