"""FastAPI glue: a dependency that turns the bearer token into an Identity."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from glidewms.security.tokens import Identity, TokenError, TokenVerifier

_bearer = HTTPBearer(auto_error=False)


def require(*scopes: str) -> Callable[..., Identity]:
    """Dependency factory: the caller must hold one of `scopes` (or admin)."""

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Identity:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        verifier: TokenVerifier = request.app.state.verifier
        try:
            identity = verifier.verify(credentials.credentials)
        except TokenError as exc:
            raise HTTPException(
                401, f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        if not identity.has(*scopes):
            raise HTTPException(
                403, f"token lacks scope: one of {', '.join(scopes)} is required"
            )
        return identity

    return dependency
