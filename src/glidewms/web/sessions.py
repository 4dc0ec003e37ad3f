"""Logins of the web console: the visitor's token stays on the server.

The browser holds only a random session id in an HttpOnly, SameSite=Strict
cookie (Secure over HTTPS): no script can read it, no other site's page can
make the browser send it, and the token itself never leaves the server (not
in a cookie, a page or a URL). Each session has its own CSRF token, which
every form that changes something (logout) carries and the console checks,
on top of SameSite.

Sessions live in memory: a console restart logs everyone out, which costs a
paste and keeps no token on disk. They are bounded (`max_sessions`, the
least recently used goes first) and expire when unused for `lifetime`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import jwt

COOKIE = "glidewms_session"
LOGIN_COOKIE = "glidewms_login"  # the login form's CSRF value (no session yet)
MAX_TOKEN_BYTES = 16384


@dataclass
class Session:
    id: str
    token: str = field(repr=False)
    subject: str
    scopes: frozenset[str]
    csrf: str
    last_used: float

    @property
    def is_operator(self) -> bool:
        """May read the factory and the frontend (their routes want these)."""
        return bool(self.scopes & {"admin", "frontend"})

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def token_claims(token: str) -> tuple[str, frozenset[str]]:
    """The subject and scopes a token says it has, for the pages' menus only:
    the services verify it on every call, so nothing is trusted from here."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "", frozenset()
    scope = claims.get("scope", "")
    scopes = scope.split() if isinstance(scope, str) else []
    subject = claims.get("sub")
    return (subject if isinstance(subject, str) else "")[:128], frozenset(scopes)


class Sessions:
    def __init__(self, lifetime: float, limit: int) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def new(self, token: str) -> Session:
        subject, scopes = token_claims(token)
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            subject=subject,
            scopes=scopes,
            csrf=secrets.token_urlsafe(32),
            last_used=time.monotonic(),
        )
        self._by_id[session.id] = session
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > self.lifetime:
            del self._by_id[session_id]
            return None
        session.last_used = now
        self._by_id.move_to_end(session_id)
        return session

    def drop(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two CSRF values, both present."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
