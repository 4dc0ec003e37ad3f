"""FastAPI glue: a dependency that turns the bearer token into an Identity."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from glidewms.security.asgi import IDENTITY_SCOPE_KEY
from glidewms.security.tokens import Identity, TokenError, TokenVerifier


class Require(HTTPBearer):
    """The dependency `require` makes: the caller's verified Identity.

    It is FastAPI's HTTPBearer scheme itself (so the OpenAPI schema names
    the bearer token), reading the header and checking the token in one
    coroutine: no nested dependency to solve and no worker thread per
    request (FastAPI runs a plain-function dependency in one, a hop that
    costs more than the check itself once the token is remembered)."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer")
        self.scopes = scopes

    async def __call__(self, request: Request) -> Identity:  # type: ignore[override]
        identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)  # the gate's (asgi.py)
        if identity is not None and identity.has(*self.scopes):
            return identity  # verified in front of the app; a refusal is worded below
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        if not token or scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        verifier: TokenVerifier = request.app.state.verifier
        try:
            identity = verifier.verify(token)
        except TokenError as exc:
            raise HTTPException(
                401, f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        if not identity.has(*self.scopes):
            if "pilot" in self.scopes and "pilot" in identity.scopes:
                raise HTTPException(
                    403, "token scope: a pilot token must carry the pilot scope alone"
                )
            raise HTTPException(
                403, f"token lacks scope: one of {', '.join(self.scopes)} is required"
            )
        return identity


def require(*scopes: str) -> Require:
    """Dependency factory: the caller must hold one of `scopes` (or admin)."""
    return Require(scopes)
