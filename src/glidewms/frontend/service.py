"""The frontend loop: read demand and supply, decide, tell the factory.

Each cycle queries the pool and the factory concurrently. A query that fails
skips the cycle for what depends on it: a frontend that cannot see the queue
must not conclude that the queue is empty and shrink the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from glidewms.config.frontend import FrontendConfig, GroupConfig
from glidewms.frontend import policy

log = logging.getLogger(__name__)


@dataclass
class PilotToken:
    token: str
    expires: float


@dataclass
class CycleReport:
    started: float
    ok: bool = True
    error: str | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


class Frontend:
    def __init__(self, config: FrontendConfig, own_token: str) -> None:
        self.config = config
        self._auth = {"Authorization": f"Bearer {own_token}"}
        self._pilot_tokens: dict[str, PilotToken] = {}
        self.last: CycleReport | None = None
        self.cycles = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.config.http_timeout, headers=self._auth) as http:
            while True:
                self.last = await self.cycle(http)
                self.cycles += 1
                await asyncio.sleep(self.config.cycle_seconds)

    async def cycle(self, http: httpx.AsyncClient) -> CycleReport:
        report = CycleReport(started=time.time())
        try:
            demand_r, pilots_r, entries_r, glideins_r = await asyncio.gather(
                http.get(f"{self.config.pool_url}/api/v1/demand"),
                http.get(f"{self.config.pool_url}/api/v1/pilots"),
                http.get(f"{self.config.factory_url}/api/v1/entries"),
                http.get(f"{self.config.factory_url}/api/v1/glideins"),
            )
            for r in (demand_r, pilots_r, entries_r, glideins_r):
                r.raise_for_status()
        except httpx.HTTPError as exc:
            report.ok, report.error = False, f"query failed, nothing changed this cycle: {exc}"
            log.warning("%s", report.error)
            return report
        autoclusters = demand_r.json()["autoclusters"]
        entries = [e for e in entries_r.json() if e.get("enabled", True)]
        for group in self.config.groups:
            try:
                report.groups[group.name] = await self._group_cycle(
                    http, group, autoclusters, entries, pilots_r.json(), glideins_r.json())
            except Exception as exc:  # one group's failure must not stop the others
                log.exception("group %s failed", group.name)
                report.groups[group.name] = {"error": str(exc)}
        return report

    async def _group_cycle(self, http: httpx.AsyncClient, group: GroupConfig,
                           autoclusters: list[dict[str, Any]], entries: list[dict[str, Any]],
                           pool_pilots: list[dict[str, Any]],
                           glideins: list[dict[str, Any]]) -> dict[str, Any]:
        demand = policy.match_demand(autoclusters, entries, group.match_expr)
        supply = supply_by_entry(group.name, pool_pilots, glideins)
        limits = policy.Limits(group.max_idle_per_entry, group.max_running_per_entry,
                               group.running_factor)
        decisions = {
            e["name"]: policy.decide(demand[e["name"]], supply.get(e["name"], policy.EntrySupply()),
                                     policy.resource(e.get("cpus"), 1), limits)
            for e in entries
        }
        token = await self._pilot_token(http, group)
        body = {"pool_url": self.config.pool_url, "pilot_token": token,
                "entries": {name: d.as_request() for name, d in decisions.items()}}
        r = await http.put(f"{self.config.factory_url}/api/v1/requests/{group.name}", json=body)
        r.raise_for_status()
        return {name: {"demand": asdict(demand[name]),
                       "supply": asdict(supply.get(name, policy.EntrySupply())),
                       "request": d.as_request(), "reasons": list(d.reasons)}
                for name, d in decisions.items()}

    async def _pilot_token(self, http: httpx.AsyncClient, group: GroupConfig) -> str:
        """A pilot token for this group, renewed when half its life is gone."""
        current = self._pilot_tokens.get(group.name)
        if current and current.expires - time.time() > group.pilot_token_lifetime / 2:
            return current.token
        r = await http.post(f"{self.config.pool_url}/api/v1/tokens/pilot",
                            json={"group": group.name, "lifetime": group.pilot_token_lifetime})
        r.raise_for_status()
        data = r.json()
        self._pilot_tokens[group.name] = PilotToken(data["token"], data["expires"])
        return data["token"]


def supply_by_entry(group: str, pool_pilots: list[dict[str, Any]],
                    glideins: list[dict[str, Any]]) -> dict[str, policy.EntrySupply]:
    """Combine the factory's view (queued, running at the site) with the pool's
    (registered, idle or busy), so a pilot that started but has not registered
    yet is still counted and does not cause another submission."""
    registered = {p["glidein_id"]: p for p in pool_pilots
                  if p.get("group") == group and p.get("glidein_id")}
    counts: dict[str, Counter[str]] = {}
    for g in glideins:
        if g.get("group") != group:
            continue
        c = counts.setdefault(g["entry"], Counter())
        if g["state"] == "queued":
            c["queued"] += 1
        elif g["state"] == "running":
            pilot = registered.get(g["glidein_id"])
            if pilot is None:
                c["starting"] += 1
            elif pilot.get("running_jobs", 0) > 0:
                c["busy"] += 1
            else:
                c["idle"] += 1
    return {entry: policy.EntrySupply(c["queued"], c["starting"], c["idle"], c["busy"])
            for entry, c in counts.items()}
