"""Login and identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from ecrf.api.deps import App, CurrentActor, RequestId
from ecrf.api.models import TokenPublic, UserPublic
from ecrf.commands import ChangePassword

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/token")
def issue_token(
    application: App, rid: RequestId, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenPublic:
    """Exchange username and password for a short-lived bearer token."""
    user = application.authenticate(form.username, form.password, rid)
    return TokenPublic(
        access_token=application.tokens.issue(user.username),
        expires_in=application.tokens.ttl_seconds,
    )


@router.get("/me")
def me(actor: CurrentActor) -> UserPublic:
    """Who the token belongs to, with current roles and sites."""
    return UserPublic(
        username=actor.username,
        full_name=actor.full_name,
        roles=list(actor.roles),
        sites=list(actor.sites),
    )


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(application: App, actor: CurrentActor, body: ChangePassword) -> Response:
    """Change your own password (the current one is re-checked and counts to lockout)."""
    application.change_password(actor, body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
