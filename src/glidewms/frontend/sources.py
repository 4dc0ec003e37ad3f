"""What the frontend asks its pools and factories, and what it sends factories.

Every call carries the token of the source it goes to, is bounded by the loop
client's timeout, and checks the peer's protocol version
(`glidewms.protocol.check_peer`) before its answer is read: a peer of another
major version counts as a failed source, like one that does not answer.
Answers of an unexpected shape are failures too, never guessed at: a frontend
that cannot see the queue must not conclude it is empty.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from glidewms.config.frontend import Source
from glidewms.protocol import API_PREFIX, VERSION_HEADER, IncompatiblePeer, check_peer

# What a failed query raises: the network, a refusal, a body that is not JSON,
# or a peer of another protocol version.
QUERY_ERRORS = (httpx.HTTPError, ValueError, IncompatiblePeer)


@dataclass
class PoolAnswer:
    """A pool's demand (autoclusters) and pilots, or why they are not trusted."""

    ok: bool
    error: str = ""
    autoclusters: list[dict[str, Any]] = field(default_factory=list)
    pilots: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class FactoryAnswer:
    """One factory's entry ads and each group's pilot counts (entry -> state -> n);
    `entries` is None when the query failed (`error` says why)."""

    entries: list[dict[str, Any]] | None
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""


def token_subject(token: str) -> str | None:
    """The `sub` of our own token, read without verifying (we only filter by it)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(data["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def checked(service: str, response: httpx.Response) -> httpx.Response:
    """The response of a peer that speaks our protocol and said yes; raises
    IncompatiblePeer or httpx.HTTPStatusError otherwise."""
    check_peer(service, response.headers.get(VERSION_HEADER))
    response.raise_for_status()
    return response


class Sources:
    """The frontend's calls to its pools and factories, each with its own token."""

    def __init__(self, own_token: str, tokens: dict[str, str] | None = None) -> None:
        self.own_token = own_token
        self.tokens = tokens or {}  # source name -> its token, when not our own
        self.subject = token_subject(own_token)

    def auth(self, source: Source) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(source.name, self.own_token)}"}

    async def get(
        self, http: httpx.AsyncClient, source: Source, kind: str, path: str, **params: Any
    ) -> Any:
        """GET `path` of the API of `source` (a `kind`: pool or factory), as JSON."""
        r = await http.get(
            f"{source.url}{API_PREFIX}/{path}", headers=self.auth(source), params=params or None
        )
        return checked(f"{kind} {source.name}", r).json()

    async def query_pool(self, http: httpx.AsyncClient, pool: Source) -> PoolAnswer:
        """The pool's demand (autoclusters) and pilots, or why they cannot be trusted."""
        try:
            demand, pilots = await asyncio.gather(
                self.get(http, pool, "pool", "demand"), self.get(http, pool, "pool", "pilots")
            )
        except QUERY_ERRORS as exc:
            return PoolAnswer(False, f"pool {pool.name} query failed: {exc!r}")
        acs = demand.get("autoclusters") if isinstance(demand, dict) else None
        if (
            not isinstance(acs, list)
            or not isinstance(pilots, list)
            or not all(isinstance(a, dict) and isinstance(a.get("ad"), str) for a in acs)
            or not all(isinstance(p, dict) for p in pilots)
        ):
            return PoolAnswer(False, f"pool {pool.name}: unexpected answer shape")
        mine = [p for p in pilots if p.get("frontend") in (None, self.subject)]
        try:
            working = sum(int(p.get("running_jobs") or 0) for p in mine)
            running = any(int(a.get("running") or 0) for a in acs)
        except (TypeError, ValueError) as exc:
            return PoolAnswer(False, f"pool {pool.name}: unexpected answer: {exc!r}")
        if working and not running:
            return PoolAnswer(
                False,
                f"pool {pool.name}: demand shows no job while our pilots "
                f"run {working}: answer not trusted",
            )
        return PoolAnswer(True, autoclusters=acs, pilots=pilots)

    async def query_factory(
        self, http: httpx.AsyncClient, factory: Source, groups: list[str]
    ) -> FactoryAnswer:
        """The factory's entry ads and, per group, its pilots there by entry and state."""
        try:
            answers = await asyncio.gather(
                self.get(http, factory, "factory", "entries"),
                *(
                    self.get(http, factory, "factory", "glideins", summary="true", group=g)
                    for g in groups
                ),
            )
        except QUERY_ERRORS as exc:
            return FactoryAnswer(
                entries=None, error=f"factory {factory.name} query failed: {exc!r}"
            )
        entries, *summaries = answers
        if not isinstance(entries, list) or not all(
            isinstance(s, dict) and isinstance(s.get("summary") or {}, dict) for s in summaries
        ):
            return FactoryAnswer(
                entries=None, error=f"factory {factory.name}: unexpected answer shape"
            )
        counts = {g: (s.get("summary") or {}) for g, s in zip(groups, summaries, strict=True)}
        return FactoryAnswer(entries=entries, counts=counts)

    async def put_request(
        self, http: httpx.AsyncClient, factory: Source, group: str, body: dict[str, Any]
    ) -> str | None:
        """PUT a group's desired state; None when the factory took it, else why not."""
        try:
            r = await http.put(
                f"{factory.url}{API_PREFIX}/requests/{group}", json=body, headers=self.auth(factory)
            )
            checked(f"factory {factory.name}", r)
        except (httpx.HTTPError, IncompatiblePeer) as exc:
            return f"factory {factory.name} refused or unreachable: {exc!r}"
        return None
