"""Account administration (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from ecrf.api.deps import App, CurrentActor
from ecrf.api.models import UserPublic
from ecrf.commands import CreateUser, ResetPassword, UnlockUser, UpdateUser
from ecrf.domain.access import Action

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(application: App, actor: CurrentActor, body: CreateUser) -> UserPublic:
    """Create an account with roles and site grants."""
    user = application.create_user(actor, body)
    return UserPublic.model_validate(application.user_view(user.username))


@router.get("/{username}")
def get_user(application: App, actor: CurrentActor, username: str) -> UserPublic:
    """One account."""
    actor.role_for(Action.MANAGE_USERS)
    return UserPublic.model_validate(application.user_view(username))


@router.patch("/{username}")
def update_user(
    application: App, actor: CurrentActor, username: str, body: UpdateUser
) -> UserPublic:
    """Change roles, sites, full name or the active flag, with a reason."""
    user = application.update_user(actor, username, body)
    return UserPublic.model_validate(application.user_view(user.username))


@router.post("/{username}/unlock")
def unlock_user(
    application: App, actor: CurrentActor, username: str, body: UnlockUser
) -> UserPublic:
    """Unlock an account locked after failed logins, with a reason."""
    user = application.unlock_user(actor, username, body)
    return UserPublic.model_validate(application.user_view(user.username))


@router.post("/{username}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(
    application: App, actor: CurrentActor, username: str, body: ResetPassword
) -> Response:
    """Set a new password for an account (admin), with a reason."""
    application.reset_password(actor, username, body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
