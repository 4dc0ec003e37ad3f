"""Pilot tokens the frontend obtains from its pools and delegates to factories.

Every pilot token the frontend asks for is scoped to one entry (`POST
/api/v1/tokens/pilot` with `entry`, and the entry's `site` when the
factories that offer the entry agree on it): such a token registers only
slots of that entry and site, so a token stolen at one site cannot bring
pilots into the pool under another site's name. The frontend therefore holds
one token per (pool, group, entry name) it asks pilots for, and sends each in
its entry's request; it asks for no group-wide token, so factory-started
pilots never hold one.

Each token is renewed when less than `pilot_token_renew_fraction` of its life
is left (or when the entry's site changed); the factory replaces its copy,
and running pilots re-read it. If a renewal fails while the current token has
more than `RENEW_GRACE` seconds left, the current one still serves. Tokens
live only in memory and never reach a log: the status shows expiry times only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
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
    site: str | None = None  # the site claim it was minted with

    def fresh(self, now: float, renew_fraction: float) -> bool:
        """More than `renew_fraction` of its life left: no need to renew yet."""
        return (self.expires - now) > (self.expires - self.issued) * renew_fraction

    def usable(self, now: float) -> bool:
        return self.expires > now + RENEW_GRACE


@dataclass(frozen=True)
class GroupTokens:
    """What one group's requests carry this cycle: a token per entry."""

    entries: dict[str, str]  # entry name -> its own token


Key = tuple[str, str, str]  # (pool, group, entry name)


def entry_sites(
    offers: Iterable[tuple[Iterable[Any], Iterable[str]]],
) -> dict[str, str | None]:
    """The site each requested entry's token is scoped to: for each factory, its
    entry ads (as the factory sent them: anything) and the names requested
    there. An entry whose factories name different sites (or none) gets no
    site scope, only its entry's."""
    seen: dict[str, set[str | None]] = {}
    for ads, names in offers:
        wanted = set(names)
        for name in wanted:
            seen.setdefault(name, set())
        for ad in ads:
            if not isinstance(ad, Mapping) or ad.get("name") not in wanted:
                continue
            site = ad.get("site")
            seen[ad["name"]].add(site if isinstance(site, str) and site else None)
    return {name: next(iter(sites)) if len(sites) == 1 else None for name, sites in seen.items()}


class PilotTokens:
    """The pilot tokens held, minted and renewed on demand."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.held: dict[Key, PilotToken] = {}

    def current(self, pool: str, group: str, entry: str) -> str | None:
        """A held token still usable (for a request sent without minting), or None."""
        token = self.held.get((pool, group, entry))
        return token.token if token is not None and token.usable(self.clock()) else None

    async def for_group(
        self,
        http: httpx.AsyncClient,
        pool: Source,
        headers: dict[str, str],
        group: GroupConfig,
        entries: Mapping[str, str | None],
    ) -> GroupTokens:
        """One token per entry name (`entries`: name -> site or None), renewed where due.

        Raises (httpx.HTTPError, ValueError, KeyError, TypeError, IncompatiblePeer)
        when one of them cannot be had: a request must not go out half-credentialed.
        """
        names = sorted(entries)
        limit = asyncio.Semaphore(MINT_CONCURRENCY)

        async def one(entry: str) -> str:
            async with limit:
                return await self.get(http, pool, headers, group, entry, entries[entry])

        tokens = await asyncio.gather(*(one(n) for n in names))
        return GroupTokens(dict(zip(names, tokens, strict=True)))

    async def get(
        self,
        http: httpx.AsyncClient,
        pool: Source,
        headers: dict[str, str],
        group: GroupConfig,
        entry: str,
        site: str | None = None,
    ) -> str:
        """One entry's token, minted if absent, due for renewal, or of another site."""
        key: Key = (pool.name, group.name, entry)
        now = self.clock()
        current = self.held.get(key)
        if current is not None and current.site != site:
            current = None  # the entry moved: a token of the old site would be refused
        if current is not None and current.fresh(now, group.pilot_token_renew_fraction):
            return current.token
        body: dict[str, Any] = {
            "group": group.name,
            "lifetime": group.pilot_token_lifetime,
            "entry": entry,
        }
        if site is not None:
            body["site"] = site
        try:
            r = await http.post(f"{pool.url}{API_PREFIX}/tokens/pilot", headers=headers, json=body)
            check_peer(f"pool {pool.name}", r.headers.get(VERSION_HEADER))
            r.raise_for_status()
            data = r.json()
            token = PilotToken(str(data["token"]), now, float(data["expires"]), site)
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IncompatiblePeer):
            if current is not None and current.usable(now):
                log.warning(
                    "group %s entry %s: pilot token renewal failed; the current one still serves",
                    group.name,
                    entry,
                )
                return current.token
            raise
        self.held[key] = token
        return token.token

    def forget(self, pool: str, group: str, keep: Iterable[str]) -> None:
        """Drop entry tokens of a group that are no longer asked for (entries gone)."""
        wanted = set(keep)
        for key in [k for k in self.held if k[:2] == (pool, group) and k[2] not in wanted]:
            del self.held[key]

    def summary(self) -> dict[str, dict[str, float]]:
        """Expiry per group and entry: no token text."""
        out: dict[str, dict[str, float]] = {}
        for (_, group, entry), token in sorted(self.held.items()):
            out.setdefault(group, {})[entry] = token.expires
        return out
