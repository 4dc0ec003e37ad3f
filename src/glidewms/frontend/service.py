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
from glidewms.factory.stage import Stage
from glidewms.frontend import policy, vostage
from glidewms.frontend.credentials import GroupTokens, PilotTokens
from glidewms.frontend.observe import FactoryView, GroupView, observe_group, pilot_start_expr
from glidewms.frontend.state import StateFile

log = logging.getLogger(__name__)


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


def plain_request(request: dict[str, Any]) -> dict[str, Any]:
    """The removal contract without the group's pilot settings (start_expr,
    container_image), for a factory that does not take them yet."""
    return {k: v for k, v in request.items() if k in REQUEST_KEYS}


FORM_RETRY_SECONDS = 600.0  # a factory on a simpler form is offered the full one again
MEMO_LIMIT = 1_000_000  # ClassAd answers kept per group between cycles (~130 bytes each)
REQUEST_KEYS = ("idle", "max_running", "remove", "remove_margin")
# Request forms, most to least complete: a factory that refuses one (422) gets the
# next from then on. "full" carries a pilot token per entry and the VO stage;
# "group-token" only the group-wide token (a factory of before entry-scoped
# tokens); "plain" keeps the removal modes, which matter more than the pilots'
# Start and image; "legacy" is the skeleton factory's boolean `remove`.
FORMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "full": dict, "group-token": dict, "plain": plain_request, "legacy": legacy_request}


def request_body(form: str, pool_url: str, tokens: GroupTokens,
                 entries: dict[str, dict[str, Any]],
                 vo_stage: dict[str, Any] | None) -> dict[str, Any]:
    """The PUT body of one group for one factory in the given form (FORMS)."""
    convert = FORMS[form]
    body: dict[str, Any] = {"pool_url": pool_url, "pilot_token": tokens.group,
                            "entries": {n: convert(r) for n, r in entries.items()}}
    if form == "full":
        for name, entry in body["entries"].items():
            if name in tokens.entries:
                entry["pilot_token"] = tokens.entries[name]
        if vo_stage is not None:
            body["vo_stage"] = vo_stage
    return body


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
        # (group, factory/entry) -> the last cycles' explanations: groups share entries
        self.explanations: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self.forms: dict[str, str] = {}  # factory -> request form it takes (FORMS), if not full
        self._form_since: dict[str, float] = {}  # factory -> when it last refused a form
        self.pilot_tokens = PilotTokens(clock)
        self.public_url = config.public_url or ""  # the API sets the listening URL if unset
        self.vo_stages: dict[str, Stage] = vostage.build_all(config)
        self._memo: dict[str, dict[tuple[Any, ...], int]] = {}  # group -> ClassAd answers
        self.last: CycleReport | None = None
        self.cycles = self.state.cycles  # counted across restarts, like the removal stages

    def _auth(self, source: Source) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(source.name, self.own_token)}"}

    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the loop: every query and request bounded by http_timeout."""
        return httpx.AsyncClient(timeout=self.config.http_timeout)

    async def run(self) -> None:
        async with self.client() as http:
            while True:
                try:
                    self.last = await self.cycle(http)
                except Exception as exc:  # the loop must outlive any bug in one cycle
                    log.exception("frontend cycle failed")
                    self.last = CycleReport(self.clock(), ok=False, errors=[repr(exc)])
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
        if (not isinstance(acs, list) or not isinstance(pilots, list)
                or not all(isinstance(a, dict) and isinstance(a.get("ad"), str) for a in acs)
                or not all(isinstance(p, dict) for p in pilots)):
            return PoolAnswer(False, f"pool {pool.name}: unexpected answer shape")
        mine = [p for p in pilots if p.get("frontend") in (None, self.subject)]
        try:
            working = sum(int(p.get("running_jobs") or 0) for p in mine)
            running = any(int(a.get("running") or 0) for a in acs)
        except (TypeError, ValueError) as exc:
            return PoolAnswer(False, f"pool {pool.name}: unexpected answer: {exc!r}")
        if working and not running:
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
        if not isinstance(entries, list) or not all(
                isinstance(s, dict) and isinstance(s.get("summary") or {}, dict)
                for s in summaries):
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
        blind: dict[str, str] = {}  # group -> why its demand is not trusted this cycle
        for group in groups:
            pool = pool_by_name[self.config.group_pool(group).name]
            if not pool.ok:
                blind[group.name] = pool.error
                continue
            fviews = [FactoryView(f.name, f.url, fac_by_name[f.name][0] or [],
                                  fac_by_name[f.name][1].get(group.name, {}))
                      for f in self.config.group_factories(group)
                      if fac_by_name[f.name][0] is not None]
            memo = self._memo.setdefault(group.name, {})
            if len(memo) > MEMO_LIMIT:  # a queue that keeps changing: start the memo again
                memo.clear()
            try:
                view = await asyncio.to_thread(
                    observe_group, group, self.subject, pool.autoclusters, pool.pilots,
                    fviews, now, True, memo)
            except Exception as exc:  # e.g. an autocluster whose ad does not parse
                # Its demand is unknown, not zero: the group is frozen like a blind pool.
                log.exception("group %s: observing demand failed", group.name)
                blind[group.name] = f"observing demand failed: {exc!r}"
                report.errors.append(f"group {group.name}: {blind[group.name]}")
                continue
            if view.expression_errors:
                # A group expression that errors hides demand: zero demand from it
                # must not start removal. Freeze the group until it is fixed.
                blind[group.name] = "group expression evaluates to Error: " + "; ".join(
                    f"{text} ({n} times)" for text, n in sorted(view.expression_errors.items()))
                log.error("group %s: %s", group.name, blind[group.name])
                report.errors.append(f"group {group.name}: {blind[group.name]}")
                continue
            views[group.name] = view
        totals = (sum(o.supply.total for v in views.values() for o in v.observations.values()),
                  sum(o.supply.idle_pilots for v in views.values()
                      for o in v.observations.values()))
        results = await asyncio.gather(*(
            self._group_cycle(http, g, views.get(g.name), blind.get(g.name, ""), fac_by_name,
                              totals, now)
            for g in groups if g.name not in report.groups), return_exceptions=True)
        for g, result in zip([g for g in groups if g.name not in report.groups], results,
                             strict=True):
            if isinstance(result, BaseException):
                log.error("group %s failed: %r", g.name, result)
                report.groups[g.name] = {"error": repr(result)}
            else:
                report.groups[g.name] = result
        report.ok = not report.errors and not any("error" in r for r in report.groups.values())
        self.cycles += 1
        try:
            self.state.save(self.memory, self.cycles)
        except OSError as exc:
            report.errors.append(f"cannot save {self.state.path}: {exc}")
        report.duration = self.clock() - now
        self.last = report
        return report

    async def _group_cycle(self, http: httpx.AsyncClient, group: GroupConfig,
                           view: GroupView | None, blind: str,
                           factories: dict[str, Any], totals: tuple[int, int],
                           now: float) -> dict[str, Any]:
        pool_source = self.config.group_pool(group)
        memory = self.memory.setdefault(group.name, {})
        out: dict[str, Any] = {"pool": pool_source.name, "factories": {}}
        if view is None:
            out["frozen"] = blind
            out["factories"] = await self._freeze(http, group, blind, now)
            return out
        decisions = self._decide(group, view, totals, memory, now)
        kept = self._keep_failed(group, view, memory, now)
        if view.failed:
            out["failed_entries"] = dict(view.failed)
        start = pilot_start_expr(group)
        sends = []
        for f in self.config.group_factories(group):
            if factories[f.name][0] is None:
                out["factories"][f.name] = factories[f.name][2]
                continue
            entries = {o.entry: self._wire(d, group, start)
                       for o, d in decisions.values() if o.factory == f.name}
            prefix = f"{f.name}/"
            entries.update({k[len(prefix):]: r for k, r in kept.items() if k.startswith(prefix)})
            sends.append((f, entries))
        names = {n for _, entries in sends for n in entries}
        tokens, why = await self._group_tokens(http, group, pool_source, names)
        vo_stage, vo_why = self._vo_advert(group)
        if vo_why:
            out["vo_stage"] = vo_why
        results = await asyncio.gather(*(
            self._put(http, group, pool_source, f, entries, tokens, vo_stage)
            for f, entries in sends), return_exceptions=True)
        for (f, _), result in zip(sends, results, strict=True):
            out["factories"][f.name] = why or ("ok" if result is None else (
                result if isinstance(result, str) else repr(result)))
        out["entries"] = {k: d.as_request() for k, (_, d) in decisions.items()}
        return out

    async def _group_tokens(self, http: httpx.AsyncClient, group: GroupConfig,
                            pool: Source, entries: set[str]) -> tuple[GroupTokens | None, str]:
        """The group's pilot tokens for this cycle (one per entry), or why none."""
        try:
            tokens = await self.pilot_tokens.for_group(http, pool, self._auth(pool), group,
                                                       entries)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return None, f"not sent: no pilot token from pool {pool.name}: {exc!r}"
        self.pilot_tokens.forget(pool.name, group.name, entries)
        return tokens, ""

    def _vo_advert(self, group: GroupConfig) -> tuple[dict[str, Any] | None, str]:
        """The request's `vo_stage` for the group, or None (and why, if it should have one)."""
        stage = self.vo_stages.get(group.name)
        if stage is None:
            return None, ""
        if not self.public_url:
            return None, "not advertised: the frontend's URL is unknown (set public_url)"
        return vostage.advert(stage, self.public_url, group.name), ""

    def _keep_failed(self, group: GroupConfig, view: GroupView,
                     memory: dict[str, policy.Memory], now: float) -> dict[str, dict[str, Any]]:
        """Entries that could not be judged: their last request again, never removal."""
        kept: dict[str, dict[str, Any]] = {}
        for key, why in view.failed.items():
            m = memory.get(key)
            request = None
            if m is not None:
                request = {"idle": m.last_idle, "max_running": m.last_max_running,
                           "remove": "NO", "remove_margin": 0}
                kept[key] = request
                memory[key] = policy.Memory(m.no_demand_cycles, m.last_idle,
                                            m.last_max_running, "NO")
            self._record(key, {"time": now, "group": group.name, "failed": why,
                               "request": request})
        return kept

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
                   factory: Source, entries: dict[str, dict[str, Any]],
                   tokens: GroupTokens | None, vo_stage: dict[str, Any] | None) -> str | None:
        """Send the group's desired state; None when the factory took it, else why not.

        A 422 means the factory does not know part of the form: the next simpler
        form (FORMS) is tried at once and kept for that factory, until
        FORM_RETRY_SECONDS later the full one is tried again (it may have been
        upgraded meanwhile).
        """
        if tokens is None:
            return "not sent: no pilot token"
        url = f"{factory.url}/api/v1/requests/{group.name}"
        names = list(FORMS)
        if self.clock() - self._form_since.get(factory.name, 0.0) > FORM_RETRY_SECONDS:
            self.forms.pop(factory.name, None)
        form = self.forms.get(factory.name, "full")
        try:
            while True:
                body = request_body(form, pool.url, tokens, entries, vo_stage)
                r = await http.put(url, json=body, headers=self._auth(factory))
                if r.status_code != 422 or form == names[-1]:
                    break
                simpler = names[names.index(form) + 1]
                log.warning("factory %s refused the %s request form (%s); using the %s form",
                            factory.name, form, r.text[:300], simpler)
                form = self.forms[factory.name] = simpler
                self._form_since[factory.name] = self.clock()
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
            pool = self.config.group_pool(group)
            held = self.pilot_tokens.current(pool.name, group.name, None)
            if held is None:
                out[f.name] = f"cannot stop removal (no valid pilot token): {why}"
                continue
            tokens = GroupTokens(held, {n: t for n in mine if (
                t := self.pilot_tokens.current(pool.name, group.name, n)) is not None})
            entries = {n: {"idle": m.last_idle, "max_running": m.last_max_running,
                           "remove": "NO", "remove_margin": 0} for n, m in mine.items()}
            err = await self._put(http, group, pool, f, entries, tokens,
                                  self._vo_advert(group)[0])
            if err is None:
                for n, m in mine.items():
                    memory[f"{prefix}{n}"] = policy.Memory(
                        m.no_demand_cycles, m.last_idle, m.last_max_running, "NO")
            out[f.name] = f"removal stopped: {why}" if err is None else err
        return out

    # ------------------------------------------------------------------ explain

    def _record(self, key: str, record: dict[str, Any]) -> None:
        slot = (str(record["group"]), key)
        history = self.explanations.get(slot)
        if history is None:
            history = self.explanations[slot] = deque(maxlen=self.config.explain_history)
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

    def explain(self, entry: str | None = None, history: bool = False,
                group: str | None = None) -> list[dict[str, Any]]:
        """Latest (or all kept) explanations, for every entry or those named `entry`
        (a key `factory/entry` or a bare entry name), of every group or `group`;
        ordered by entry, then group."""
        out = []
        for (name, key), records in sorted(self.explanations.items(),
                                           key=lambda item: (item[0][1], item[0][0])):
            if entry is not None and entry not in (key, key.split("/", 1)[-1]):
                continue
            if group is not None and name != group:
                continue
            out.extend(records if history else list(records)[-1:])
        return out
