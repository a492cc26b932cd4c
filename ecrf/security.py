"""Password hashing (argon2id) and short-lived bearer tokens (HS256 JWT via PyJWT)."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ecrf.domain.errors import InvalidInputError, NotAuthenticatedError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
_TOKENS_REMEMBERED = 10_000


def check_password_policy(password: str) -> None:
    """Refuse passwords that are too short or too long (422)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInputError.single(
            "/password",
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
        )


class Passwords:
    """argon2id hashing with a configurable cost (the default is RFC 9106's second profile)."""

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        # Checked when the username does not exist, so a failed login takes the same
        # time whether or not the account exists.
        self._dummy_hash = self._hasher.hash("not a real password, only for timing")

    def hash(self, password: str) -> str:
        """Return the argon2id hash of a password that meets the policy."""
        check_password_policy(password)
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; a missing hash still costs one verification."""
        try:
            matched = self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and bool(password_hash)


@dataclass(frozen=True)
class TokenService:
    """Issues and checks bearer tokens signed with a server secret."""

    secret: str
    ttl_seconds: int = 900
    # Tokens whose signature was checked once, with their subject and expiry: each
    # request re-checks only the expiry (decoding costs more than the rest of the check).
    _verified: dict[str, tuple[str, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_file(cls, path: Path, ttl_seconds: int) -> TokenService:
        """Read the secret from ``path``, creating it (mode 600) on first start."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Exclusive create: workers starting together must all end up with the one
            # secret that won, or tokens issued by one would be refused by another.
            with contextlib.suppress(FileExistsError):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    handle.write(secrets.token_urlsafe(48))
                    handle.flush()
                    os.fsync(handle.fileno())
        secret = path.read_text(encoding="utf-8").strip()
        if not secret:
            raise RuntimeError(f"{path} is empty; delete it to create a new token secret")
        return cls(secret=secret, ttl_seconds=ttl_seconds)

    def issue(self, username: str) -> str:
        """A token for ``username`` that expires after ``ttl_seconds``."""
        now = int(time.time())
        claims = {"sub": username, "iat": now, "exp": now + self.ttl_seconds}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def username(self, token: str) -> str:
        """The username a valid, unexpired token was issued to; 401 otherwise."""
        verified = self._verified.get(token)
        if verified is not None:
            if verified[1] <= time.time():  # expired, as PyJWT decides it
                raise NotAuthenticatedError("token expired; log in again")
            return verified[0]
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticatedError("token expired; log in again") from None
        except jwt.PyJWTError:
            raise NotAuthenticatedError("invalid token") from None
        subject, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(subject, str):
            raise NotAuthenticatedError("invalid token")
        if isinstance(expires, int):
            if len(self._verified) >= _TOKENS_REMEMBERED:
                self._verified.clear()
            self._verified[token] = (subject, expires)
        return subject
