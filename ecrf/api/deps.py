"""Request dependencies: the application, the caller's identity, and the request id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from ecrf.application import EcrfApplication
from ecrf.domain.access import Actor
from ecrf.domain.errors import NotAuthenticatedError
from projections.runner import ProjectionRunner

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def get_application(request: Request) -> EcrfApplication:
    """The application instance of this server."""
    application: EcrfApplication = request.app.state.application
    return application


def get_projections(request: Request) -> ProjectionRunner:
    """The projection runner of this server."""
    runner: ProjectionRunner = request.app.state.projections
    return runner


def request_id(request: Request) -> str:
    """The id of this request (set by middleware, echoed as X-Request-ID)."""
    return str(getattr(request.state, "request_id", ""))


App = Annotated[EcrfApplication, Depends(get_application)]
Projections = Annotated[ProjectionRunner, Depends(get_projections)]
RequestId = Annotated[str, Depends(request_id)]


def current_actor(
    request: Request,
    application: App,
    rid: RequestId,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Actor:
    """The authenticated caller, with roles and sites as they are now."""
    if not token:
        raise NotAuthenticatedError("not authenticated: send a bearer token")
    actor = application.actor_for_token(token, rid)
    request.state.username = actor.username  # for the record of refused requests
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
