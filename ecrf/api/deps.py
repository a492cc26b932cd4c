"""Request dependencies: the application, the caller's identity, and the request id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from ecrf.application import EcrfApplication
from ecrf.domain.access import Actor
from ecrf.domain.errors import NotAuthenticatedError
from projections.runner import ProjectionRunner

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


# The dependencies that only read request state are ``async def``: FastAPI runs a plain
# ``def`` dependency in the thread pool, and each such hop costs a thread switch and a
# turn at the GIL, several times what these functions do.


async def get_application(request: Request) -> EcrfApplication:
    """The application instance of this server."""
    application: EcrfApplication = request.app.state.application
    return application


async def get_projections(request: Request) -> ProjectionRunner:
    """The projection runner of this server."""
    runner: ProjectionRunner = request.app.state.projections
    return runner


async def request_id(request: Request) -> str:
    """The id of this request (set by middleware, echoed as X-Request-ID)."""
    return str(getattr(request.state, "request_id", ""))


App = Annotated[EcrfApplication, Depends(get_application)]
Projections = Annotated[ProjectionRunner, Depends(get_projections)]
RequestId = Annotated[str, Depends(request_id)]


@dataclass(frozen=True)
class Caller:
    """Whoever sent a request: checked against the current account by ``actor()``.

    For routes that run all of their work in one hop to the thread pool (the token check
    reads the store, so it must not run on the event loop).
    """

    request: Request
    application: EcrfApplication
    token: str | None
    request_id: str

    def actor(self) -> Actor:
        """The authenticated caller, with roles and sites as they are now."""
        if not self.token:
            raise NotAuthenticatedError("not authenticated: send a bearer token")
        actor = self.application.actor_for_token(self.token, self.request_id)
        self.request.state.username = actor.username  # for the record of refused requests
        return actor


async def caller(
    request: Request,
    application: App,
    rid: RequestId,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Caller:
    """The request's bearer, not yet checked (see `Caller.actor`)."""
    return Caller(request, application, token, rid)


def current_actor(identity: Annotated[Caller, Depends(caller)]) -> Actor:
    """The authenticated caller, with roles and sites as they are now."""
    return identity.actor()


CurrentActor = Annotated[Actor, Depends(current_actor)]
CallerOf = Annotated[Caller, Depends(caller)]
