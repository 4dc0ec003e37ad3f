"""Pilot tokens the frontend obtains from its pools and delegates to factories.

A pilot token minted for one entry (`POST /api/v1/tokens/pilot` with
`entry`) registers only slots of that entry, so a token stolen at one site
cannot bring pilots into the pool under another site's name. The frontend
therefore holds one token per (pool, group, entry name) it asks pilots for,
plus one group-wide token for the request's top-level `pilot_token` (what
pilots of an entry without a token of its own get, e.g. in a request re-sent
with removal off while the pool is blind).

Each token is renewed when less than `pilot_token_renew_fraction` of its life
is left; the factory replaces its copy, and running pilots re-read it. If a
renewal fails while the current token has more than `RENEW_GRACE` seconds
left, the current one still serves. Tokens live only in memory and never
reach a log: the status shows expiry times only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from glidewms.config.frontend import GroupConfig, Source
from glidewms.protocol import API_PREFIX, VERSION_HEADER, IncompatiblePeer, check_peer

log = logging.getLogger(__name__)

RENEW_GRACE = 60.0  # seconds: a token closer than this to expiry is not sent any more
MINT_CONCURRENCY = 16  # parallel mint calls to one pool at most


@dataclass(frozen=True)
class PilotToken:
    token: str
    issued: float
    expires: float

    def fresh(self, now: float, renew_fraction: float) -> bool:
        """More than `renew_fraction` of its life left: no need to renew yet."""
        return (self.expires - now) > (self.expires - self.issued) * renew_fraction

    def usable(self, now: float) -> bool:
        return self.expires > now + RENEW_GRACE


@dataclass(frozen=True)
class GroupTokens:
    """What one group's requests carry this cycle."""

    group: str  # the top-level `pilot_token`
    entries: dict[str, str]  # entry name -> its own token


Key = tuple[str, str, str | None]  # (pool, group, entry name or None for group-wide)


class PilotTokens:
    """The pilot tokens held, minted and renewed on demand."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.held: dict[Key, PilotToken] = {}

    def current(self, pool: str, group: str, entry: str | None) -> str | None:
        """A held token still usable (for a request sent without minting), or None."""
        token = self.held.get((pool, group, entry))
        return token.token if token is not None and token.usable(self.clock()) else None

    async def for_group(
        self,
        http: httpx.AsyncClient,
        pool: Source,
        headers: dict[str, str],
        group: GroupConfig,
        entries: Iterable[str],
    ) -> GroupTokens:
        """The group-wide token and one per entry name, renewed where due.

        Raises (httpx.HTTPError, ValueError, KeyError, TypeError, IncompatiblePeer)
        when one of them cannot be had: a request must not go out half-credentialed.
        """
        names = sorted(set(entries))
        limit = asyncio.Semaphore(MINT_CONCURRENCY)

        async def one(entry: str | None) -> str:
            async with limit:
                return await self.get(http, pool, headers, group, entry)

        tokens = await asyncio.gather(one(None), *(one(n) for n in names))
        return GroupTokens(tokens[0], dict(zip(names, tokens[1:], strict=True)))

    async def get(
        self,
        http: httpx.AsyncClient,
        pool: Source,
        headers: dict[str, str],
        group: GroupConfig,
        entry: str | None,
    ) -> str:
        """One token, minted if absent or due for renewal."""
        key: Key = (pool.name, group.name, entry)
        now = self.clock()
        current = self.held.get(key)
        if current is not None and current.fresh(now, group.pilot_token_renew_fraction):
            return current.token
        body: dict[str, Any] = {"group": group.name, "lifetime": group.pilot_token_lifetime}
        if entry is not None:
            body["entry"] = entry
        try:
            r = await http.post(f"{pool.url}{API_PREFIX}/tokens/pilot", headers=headers, json=body)
            check_peer(f"pool {pool.name}", r.headers.get(VERSION_HEADER))
            r.raise_for_status()
            data = r.json()
            token = PilotToken(str(data["token"]), now, float(data["expires"]))
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IncompatiblePeer):
            if current is not None and current.usable(now):
                log.warning(
                    "group %s entry %s: pilot token renewal failed; the current one still serves",
                    group.name,
                    entry or "*",
                )
                return current.token
            raise
        self.held[key] = token
        return token.token

    def forget(self, pool: str, group: str, keep: Iterable[str]) -> None:
        """Drop entry tokens of a group that are no longer asked for (entries gone)."""
        wanted = set(keep)
        for key in [
            k
            for k in self.held
            if k[:2] == (pool, group) and k[2] is not None and k[2] not in wanted
        ]:
            del self.held[key]

    def summary(self) -> dict[str, dict[str, float]]:
        """Expiry per group and entry (`*` for the group-wide token): no token text."""
        out: dict[str, dict[str, float]] = {}
        for (_, group, entry), token in sorted(
            self.held.items(), key=lambda kv: (kv[0][1], kv[0][2] or "")
        ):
            out.setdefault(group, {})[entry or "*"] = token.expires
        return out
