"""What the factory's routes depend on: the caller's identity and the running factory.

`create_app` (factory/api.py) puts the `Factory`, the token verifier and the
`Reloader` on `app.state`; these dependencies hand them to the routes. They
are coroutines: FastAPI would run a plain function in a worker thread, a hop
that costs more than the lookup.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from glidewms.factory.reload import Reloader
from glidewms.factory.service import Factory
from glidewms.factory.store import FactoryStore
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenVerifier

# Frontend and group names become directory and file names under credentials/.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Frontend = Annotated[Identity, Depends(require("frontend"))]
Pilot = Annotated[Identity, Depends(require("pilot"))]
Admin = Annotated[Identity, Depends(require("admin"))]


async def _factory(request: Request) -> Factory:
    factory: Factory = request.app.state.factory
    return factory


async def _store(request: Request) -> FactoryStore:
    store: FactoryStore = request.app.state.factory.store
    return store


async def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


async def _reloader(request: Request) -> Reloader:
    reloader: Reloader = request.app.state.reloader
    return reloader


FactoryDep = Annotated[Factory, Depends(_factory)]
StoreDep = Annotated[FactoryStore, Depends(_store)]
VerifierDep = Annotated[TokenVerifier, Depends(_verifier)]
ReloaderDep = Annotated[Reloader, Depends(_reloader)]


def check_name(kind: str, value: str, status: int) -> None:
    """Refuse a name that cannot be a file name under credentials/ (`status`: 403 when
    it is the caller's own, 422 when it is in the request)."""
    if not NAME.fullmatch(value):  # `$` with match() would accept "main\n"
        raise HTTPException(
            status, f"{kind} {value!r} is not a valid name (letters, digits, '_', '.', '-')"
        )


def frontend_filter(identity: Identity) -> str | None:
    """Whose rows the caller sees: its own (a frontend), or everyone's (None: admin)."""
    return None if identity.is_admin else identity.subject
