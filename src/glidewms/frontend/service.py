"""The frontend loop: read demand and supply, decide, tell the factories.

Each cycle queries every pool (demand, pilots) and every factory (entries,
pilot counts per group) at once, each with its own timeout, so one that hangs
or fails delays nothing else. What depends on a failed source is skipped, not
guessed: a frontend that cannot see the queue must not conclude it is empty.
If a group's pool fails while its last request allowed removal, the request
is re-sent unchanged but with removal off, so no pilot is removed on a blind
cycle. Errors of one group, factory or entry are caught, reported in the
explanation and the status, and never stop the others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from glidewms.config.frontend import FrontendConfig, GroupConfig, Source
from glidewms.frontend import policy
from glidewms.frontend.observe import FactoryView, GroupView, observe_group, pilot_start_expr
from glidewms.frontend.state import StateFile

log = logging.getLogger(__name__)


@dataclass
class PilotToken:
    token: str
    issued: float
    expires: float


@dataclass
class PoolAnswer:
    ok: bool
    error: str = ""
    autoclusters: list[dict[str, Any]] = field(default_factory=list)
    pilots: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CycleReport:
    started: float
    duration: float = 0.0
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


def token_subject(token: str) -> str | None:
    """The `sub` of our own token, read without verifying (we only filter by it)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(data["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def legacy_request(request: dict[str, Any]) -> dict[str, Any]:
    """The skeleton factory's form: `remove` a boolean, no other keys."""
    return {"idle": request["idle"], "max_running": request["max_running"],
            "remove": request["remove"] in ("IDLE", "ALL")}


class Frontend:
    def __init__(self, config: FrontendConfig, own_token: str,
                 tokens: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.own_token = own_token
        self.tokens = tokens or {}  # source name -> its token, when not our own
        self.subject = token_subject(own_token)
        self.clock = clock
        self.state = StateFile(config.state_dir / "state.json")
        self.memory = self.state.load()
        self.explanations: dict[str, deque[dict[str, Any]]] = {}
        self.legacy: set[str] = set()  # factories that refused the removal contract
        self._pilot_tokens: dict[str, PilotToken] = {}
        self.last: CycleReport | None = None
        self.cycles = 0

    def _auth(self, source: Source) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(source.name, self.own_token)}"}

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.config.http_timeout) as http:
            while True:
                try:
                    self.last = await self.cycle(http)
                except Exception as exc:  # the loop must outlive any bug in one cycle
                    log.exception("frontend cycle failed")
                    self.last = CycleReport(self.clock(), ok=False, errors=[repr(exc)])
                self.cycles += 1
                await asyncio.sleep(self.config.cycle_seconds)

    # ------------------------------------------------------------------ queries

    async def _get(self, http: httpx.AsyncClient, source: Source, path: str,
                   **params: Any) -> Any:
        r = await http.get(f"{source.url}/api/v1/{path}", headers=self._auth(source),
                           params=params or None)
        r.raise_for_status()
        return r.json()

    async def query_pool(self, http: httpx.AsyncClient, pool: Source) -> PoolAnswer:
        try:
            demand, pilots = await asyncio.gather(self._get(http, pool, "demand"),
                                                  self._get(http, pool, "pilots"))
        except (httpx.HTTPError, ValueError) as exc:
            return PoolAnswer(False, f"pool {pool.name} query failed: {exc!r}")
        acs = demand.get("autoclusters") if isinstance(demand, dict) else None
        if not isinstance(acs, list) or not isinstance(pilots, list):
            return PoolAnswer(False, f"pool {pool.name}: unexpected answer shape")
        mine = [p for p in pilots if p.get("frontend") in (None, self.subject)]
        working = sum(int(p.get("running_jobs") or 0) for p in mine)
        if working and not any(int(a.get("running") or 0) for a in acs):
            return PoolAnswer(False, f"pool {pool.name}: demand shows no job while our pilots "
                                     f"run {working}: answer not trusted")
        return PoolAnswer(True, autoclusters=acs, pilots=pilots)

    async def query_factory(self, http: httpx.AsyncClient, factory: Source,
                            groups: list[str]) -> tuple[list[dict[str, Any]] | None,
                                                        dict[str, dict[str, Any]], str]:
        try:
            answers = await asyncio.gather(
                self._get(http, factory, "entries"),
                *(self._get(http, factory, "glideins", summary="true", group=g)
                  for g in groups))
        except (httpx.HTTPError, ValueError) as exc:
            return None, {}, f"factory {factory.name} query failed: {exc!r}"
        entries, *summaries = answers
        if not isinstance(entries, list):
            return None, {}, f"factory {factory.name}: unexpected answer shape"
        counts = {g: (s.get("summary") or {}) for g, s in zip(groups, summaries, strict=True)}
        return entries, counts, ""

    # ------------------------------------------------------------------ cycle

    async def cycle(self, http: httpx.AsyncClient) -> CycleReport:
        now = self.clock()
        report = CycleReport(started=now)
        groups = self.config.groups
        pools = {self.config.group_pool(g).name: self.config.group_pool(g) for g in groups}
        factories = {f.name: f for g in groups for f in self.config.group_factories(g)}
        factory_groups = {name: [g.name for g in groups
                                 if name in {f.name for f in self.config.group_factories(g)}]
                          for name in factories}
        pool_answers, factory_answers = await asyncio.gather(
            asyncio.gather(*(self.query_pool(http, p) for p in pools.values())),
            asyncio.gather(*(self.query_factory(http, f, factory_groups[f.name])
                             for f in factories.values())))
        pool_by_name = dict(zip(pools, pool_answers, strict=True))
        fac_by_name = dict(zip(factories, factory_answers, strict=True))
        report.errors += [a.error for a in pool_answers if not a.ok]
        report.errors += [a[2] for a in factory_answers if a[2]]

        views: dict[str, GroupView] = {}
        for group in groups:
            pool = pool_by_name[self.config.group_pool(group).name]
            if not pool.ok:
                continue
            fviews = [FactoryView(f.name, f.url, fac_by_name[f.name][0] or [],
                                  fac_by_name[f.name][1].get(group.name, {}))
                      for f in self.config.group_factories(group)
                      if fac_by_name[f.name][0] is not None]
            try:
                views[group.name] = await asyncio.to_thread(
                    observe_group, group, self.subject, pool.autoclusters, pool.pilots,
                    fviews, now)
            except Exception as exc:
                log.exception("group %s: observing demand failed", group.name)
                report.groups[group.name] = {"error": f"observing demand failed: {exc!r}"}
        totals = (sum(o.supply.total for v in views.values() for o in v.observations.values()),
                  sum(o.supply.idle_pilots for v in views.values()
                      for o in v.observations.values()))
        results = await asyncio.gather(*(
            self._group_cycle(http, g, views.get(g.name), pool_by_name, fac_by_name, totals, now)
            for g in groups if g.name not in report.groups), return_exceptions=True)
        for g, result in zip([g for g in groups if g.name not in report.groups], results,
                             strict=True):
            if isinstance(result, BaseException):
                log.error("group %s failed: %r", g.name, result)
                report.groups[g.name] = {"error": repr(result)}
            else:
                report.groups[g.name] = result
        report.ok = not report.errors and not any("error" in r for r in report.groups.values())
        try:
            self.state.save(self.memory)
        except OSError as exc:
            report.errors.append(f"cannot save {self.state.path}: {exc}")
        report.duration = self.clock() - now
        return report

    async def _group_cycle(self, http: httpx.AsyncClient, group: GroupConfig,
                           view: GroupView | None, pools: dict[str, PoolAnswer],
                           factories: dict[str, Any], totals: tuple[int, int],
                           now: float) -> dict[str, Any]:
        pool_source = self.config.group_pool(group)
        pool = pools[pool_source.name]
        memory = self.memory.setdefault(group.name, {})
        out: dict[str, Any] = {"pool": pool_source.name, "factories": {}}
        if view is None:
            out["factories"] = await self._freeze(http, group, pool.error, now)
            return out
        decisions = self._decide(group, view, totals, memory, now)
        start = pilot_start_expr(group)
        sends = []
        for f in self.config.group_factories(group):
            if factories[f.name][0] is None:
                out["factories"][f.name] = factories[f.name][2]
                continue
            wanted = {o.entry: d for k, (o, d) in decisions.items() if o.factory == f.name}
            entries = {name: self._wire(d, group, start) for name, d in wanted.items()}
            sends.append((f, entries))
        results = await asyncio.gather(*(self._put(http, group, pool_source, f, entries)
                                          for f, entries in sends), return_exceptions=True)
        for (f, _), result in zip(sends, results, strict=True):
            out["factories"][f.name] = "ok" if result is None else (
                result if isinstance(result, str) else repr(result))
        out["entries"] = {k: d.as_request() for k, (_, d) in decisions.items()}
        return out

    def _wire(self, d: policy.Decision, group: GroupConfig, start: str | None) -> dict[str, Any]:
        body = d.as_request()
        if start is not None:
            body["start_expr"] = start
        if group.container_image is not None:
            body["container_image"] = group.container_image
        return body

    def _decide(self, group: GroupConfig, view: GroupView, totals: tuple[int, int],
                memory: dict[str, policy.Memory], now: float,
                ) -> dict[str, tuple[Any, policy.Decision]]:
        c, g = self.config, group
        knobs = policy.Knobs(g.ramp_up_attenuation, g.reserve_idle, g.max_idle_per_entry,
                             g.running_factor, g.max_running_per_entry,
                             g.demand_count == "proportional")
        rules = policy.RemovalRules(g.max_removal, g.removal_margin,
                                    g.zero_demand_confirm_cycles, g.removal_escalate_cycles)
        obs = view.observations.values()
        group_counts = (sum(o.supply.total for o in obs), sum(o.supply.idle_pilots for o in obs))
        out: dict[str, tuple[Any, policy.Decision]] = {}
        for key, o in view.observations.items():
            try:
                levels = [
                    policy.Level("entry", o.supply.total, o.supply.idle_pilots,
                                 g.max_running_per_entry, g.max_idle_pilots_per_entry, None,
                                 g.curb_idle_pilots_per_entry),
                    policy.Level("group", *group_counts, g.max_pilots_per_group,
                                 g.max_idle_pilots_per_group, g.curb_pilots_per_group,
                                 g.curb_idle_pilots_per_group),
                    policy.Level("global", *totals, c.max_pilots_global,
                                 c.max_idle_pilots_global, c.curb_pilots_global,
                                 c.curb_idle_pilots_global),
                ]
                d = policy.decide(o.demand, o.supply, levels, knobs, rules,
                                  memory.get(key, policy.Memory()))
                memory[key] = d.memory
                out[key] = (o, d)
                self._explain(key, group, now, o, d, None)
            except Exception as exc:  # one entry's failure must not stop the others
                log.exception("group %s entry %s: decision failed", group.name, key)
                m = memory.get(key, policy.Memory())
                d = policy.Decision(m.last_idle, m.last_max_running, "NO", memory=m,
                                    reasons=(f"decision failed ({exc!r}): last request kept, "
                                             "no removal",))
                out[key] = (o, d)
                self._explain(key, group, now, o, d, repr(exc))
        for key, why in view.skipped.items():
            self._record(key, {"time": now, "group": group.name, "skipped": why})
        return out

    async def _put(self, http: httpx.AsyncClient, group: GroupConfig, pool: Source,
                   factory: Source, entries: dict[str, dict[str, Any]]) -> str | None:
        """Send the group's desired state; None when the factory took it, else why not."""
        try:
            token = await self._pilot_token(http, group, pool)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return f"no pilot token from pool {pool.name}: {exc!r}"
        if factory.name in self.legacy:
            entries = {n: legacy_request(r) for n, r in entries.items()}
        body = {"pool_url": pool.url, "pilot_token": token, "entries": entries}
        url = f"{factory.url}/api/v1/requests/{group.name}"
        try:
            r = await http.put(url, json=body, headers=self._auth(factory))
            if r.status_code == 422 and factory.name not in self.legacy:
                log.warning("factory %s refused the request (%s); retrying in the legacy form",
                            factory.name, r.text[:300])
                self.legacy.add(factory.name)
                body["entries"] = {n: legacy_request(e) for n, e in entries.items()}
                r = await http.put(url, json=body, headers=self._auth(factory))
            r.raise_for_status()
        except httpx.HTTPError as exc:
            return f"factory {factory.name} refused or unreachable: {exc!r}"
        return None

    async def _freeze(self, http: httpx.AsyncClient, group: GroupConfig, why: str,
                      now: float) -> dict[str, str]:
        """The pool is blind: keep the last request but never remove (nor count cycles)."""
        memory = self.memory.get(group.name, {})
        out: dict[str, str] = {}
        for f in self.config.group_factories(group):
            prefix = f"{f.name}/"
            mine = {k[len(prefix):]: m for k, m in memory.items() if k.startswith(prefix)}
            for key in (f"{prefix}{n}" for n in mine):
                self._record(key, {"time": now, "group": group.name, "frozen": why,
                                   "request": None})
            if not any(m.last_remove != "NO" for m in mine.values()):
                out[f.name] = f"not sent: {why}"
                continue
            token = self._pilot_tokens.get(group.name)
            if token is None or token.expires <= self.clock():
                out[f.name] = f"cannot stop removal (no valid pilot token): {why}"
                continue
            entries = {n: {"idle": m.last_idle, "max_running": m.last_max_running,
                           "remove": "NO", "remove_margin": 0} for n, m in mine.items()}
            err = await self._put(http, group, self.config.group_pool(group), f, entries)
            if err is None:
                for n, m in mine.items():
                    memory[f"{prefix}{n}"] = policy.Memory(
                        m.no_demand_cycles, m.last_idle, m.last_max_running, "NO")
            out[f.name] = f"removal stopped: {why}" if err is None else err
        return out

    async def _pilot_token(self, http: httpx.AsyncClient, group: GroupConfig,
                           pool: Source) -> str:
        """A pilot token for this group, renewed before it runs low."""
        now = self.clock()
        current = self._pilot_tokens.get(group.name)
        if current and (current.expires - now) > (
                (current.expires - current.issued) * group.pilot_token_renew_fraction):
            return current.token
        try:
            r = await http.post(f"{pool.url}/api/v1/tokens/pilot", headers=self._auth(pool),
                                json={"group": group.name,
                                      "lifetime": group.pilot_token_lifetime})
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError):
            if current and current.expires > now + 60:
                log.warning("group %s: pilot token renewal failed; the current one still "
                            "serves", group.name)
                return current.token
            raise
        self._pilot_tokens[group.name] = PilotToken(data["token"], now, float(data["expires"]))
        return data["token"]

    # ------------------------------------------------------------------ explain

    def _record(self, key: str, record: dict[str, Any]) -> None:
        history = self.explanations.get(key)
        if history is None:
            history = self.explanations[key] = deque(maxlen=self.config.explain_history)
        history.append({"cycle": self.cycles, "entry": key, **record})

    def _explain(self, key: str, group: GroupConfig, now: float, o: Any, d: policy.Decision,
                 error: str | None) -> None:
        p = d.pressure
        self._record(key, {
            "time": now, "group": group.name, "factory": o.factory, "entry_name": o.entry,
            "size": vars(o.info.size),
            "demand": o.demand.summary(), "supply": o.supply.summary(),
            "pressure": None if p is None else {
                "demand_units": round(p.demand_units, 3),
                "effective_idle": round(p.effective_idle, 3),
                "attenuated": round(p.attenuated, 3), "reserve": p.reserve,
                "limits": list(p.limits), "curbs": list(p.curbs)},
            "removal": {"stage": d.remove, "no_demand_cycles": d.memory.no_demand_cycles,
                        "margin": d.remove_margin},
            "request": d.as_request(), "reasons": list(d.reasons), "error": error,
        })

    def explain(self, entry: str | None = None, history: bool = False) -> list[dict[str, Any]]:
        """Latest (or all kept) explanations, for every entry or those named `entry`
        (a key `factory/entry` or a bare entry name)."""
        out = []
        for key, records in sorted(self.explanations.items()):
            if entry is not None and entry not in (key, key.split("/", 1)[-1]):
                continue
            out.extend(records if history else list(records)[-1:])
        return out
