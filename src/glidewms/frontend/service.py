"""The frontend loop: read demand and supply, decide, tell the factories.

Each cycle queries every pool (demand, pilots) and every factory (entries,
pilot counts per group) at once, each with its own timeout (`sources.py`), so
one that hangs or fails delays nothing else. What depends on a failed source
is skipped, not guessed: a frontend that cannot see the queue must not
conclude it is empty. If a group's pool fails while its last request allowed
removal, the request is re-sent unchanged but with removal off, so no pilot is
removed on a blind cycle. Errors of one group, factory or entry are caught,
reported in the explanation and the status, and never stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from glidewms.config.frontend import FrontendConfig, GroupConfig, Source
from glidewms.factory.stage import Stage
from glidewms.frontend import policy, vostage
from glidewms.frontend.credentials import GroupTokens, PilotTokens, entry_sites
from glidewms.frontend.explanations import Explanations, Record, decision_record
from glidewms.frontend.faults import Faults
from glidewms.frontend.observe import (
    FactoryView,
    GroupView,
    Observation,
    observe_group,
    pilot_start_expr,
)
from glidewms.frontend.sources import QUERY_ERRORS, FactoryAnswer, PoolAnswer, Sources
from glidewms.frontend.state import StateFile
from glidewms.protocol import RemovalStage
from glidewms.security.tls import client_context

log = logging.getLogger(__name__)

MEMO_LIMIT = 1_000_000  # ClassAd answers kept per group between cycles (~130 bytes each)
Request = dict[str, Any]  # one entry's request as sent (policy.Decision.as_request)


@dataclass
class CycleReport:
    started: float
    duration: float = 0.0
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


PoolTokens = list[tuple[str, int, GroupTokens]]  # (pool URL, share, its tokens), first first


def request_body(
    pool_url: str,
    tokens: GroupTokens,
    entries: dict[str, Request],
    vo_stage: dict[str, Any] | None,
    pools: PoolTokens | None = None,
) -> dict[str, Any]:
    """The PUT body of one group for one factory: every entry with its own pilot token
    (entry-scoped: there is no group-wide one, credentials.py), and the VO stage.
    A group of several pools also lists them, each with its share and its own
    entry tokens (minted by that pool: valid there only)."""
    body: dict[str, Any] = {
        "pool_url": pool_url,
        "entries": {n: dict(r) for n, r in entries.items()},
    }
    for name, entry in body["entries"].items():
        if name in tokens.entries:
            entry["pilot_token"] = tokens.entries[name]
    if vo_stage is not None:
        body["vo_stage"] = vo_stage
    if pools is not None and len(pools) > 1:
        body["pools"] = [
            {
                "pool_url": url,
                "share": share,
                "entry_tokens": {n: t for n, t in toks.entries.items() if n in entries},
            }
            for url, share, toks in pools
        ]
    return body


def merged_answer(answers: list[PoolAnswer]) -> PoolAnswer:
    """What a group of several pools sees: their demand added up (every queue's
    autoclusters), and each pilot once (a pilot serving them all registers with
    each; its first pool's record stands for it). Blind if any pool is."""
    if len(answers) == 1:
        return answers[0]
    bad = [a.error for a in answers if not a.ok]
    if bad:
        return PoolAnswer(ok=False, error="; ".join(bad))
    seen: set[str] = set()
    pilots = []
    for answer in answers:
        for pilot in answer.pilots:
            gid = pilot.get("glidein_id")
            if gid is not None:
                if str(gid) in seen:
                    continue
                seen.add(str(gid))
            pilots.append(pilot)
    return PoolAnswer(
        ok=True, autoclusters=[ac for a in answers for ac in a.autoclusters], pilots=pilots
    )


def without_removal(m: policy.Memory) -> Request:
    """The last request remembered for an entry, with removal off (a blind cycle)."""
    return {
        "idle": m.last_idle,
        "max_running": m.last_max_running,
        "remove": RemovalStage.NO.value,
        "remove_margin": 0,
    }


def entry_levels(
    config: FrontendConfig,
    g: GroupConfig,
    o: Observation,
    group_counts: tuple[int, int],
    totals: tuple[int, int],
) -> list[policy.Level]:
    """The entry, group and global counts (pilots, idle pilots) with their limits."""
    return [
        policy.Level(
            name="entry",
            pilots=o.supply.total,
            idle_pilots=o.supply.idle_pilots,
            max_pilots=g.max_running_per_entry,
            max_idle_pilots=g.max_idle_pilots_per_entry,
            curb_idle_pilots=g.curb_idle_pilots_per_entry,
        ),
        policy.Level(
            name="group",
            pilots=group_counts[0],
            idle_pilots=group_counts[1],
            max_pilots=g.max_pilots_per_group,
            max_idle_pilots=g.max_idle_pilots_per_group,
            curb_pilots=g.curb_pilots_per_group,
            curb_idle_pilots=g.curb_idle_pilots_per_group,
        ),
        policy.Level(
            name="global",
            pilots=totals[0],
            idle_pilots=totals[1],
            max_pilots=config.max_pilots_global,
            max_idle_pilots=config.max_idle_pilots_global,
            curb_pilots=config.curb_pilots_global,
            curb_idle_pilots=config.curb_idle_pilots_global,
        ),
    ]


class Frontend:
    """The loop and what it keeps between cycles: memory of past requests (also on
    disk), explanations, pilot tokens, the groups' VO stages and ClassAd answers."""

    def __init__(
        self,
        config: FrontendConfig,
        own_token: str,
        tokens: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.sources = Sources(own_token, tokens)
        self.subject = self.sources.subject
        self.clock = clock
        self.state = StateFile(config.state_dir / "state.json")
        self.memory = self.state.load()
        self.explanations = Explanations(
            config.explain_history,
            config.explain_history_hours * 3600,
            config.state_dir / "explain.jsonl",
        )
        self.explanations.load(clock())
        self.faults = Faults()  # logs each source's failure streaks once per change
        self.pilot_tokens = PilotTokens(clock)
        self.public_url = config.public_url or ""  # the API sets the listening URL if unset
        self.vo_stages: dict[str, Stage] = vostage.build_all(config)
        self._memo: dict[str, dict[tuple[Any, ...], int]] = {}  # group -> ClassAd answers
        self.last: CycleReport | None = None
        self.cycles = self.state.cycles  # counted across restarts, like the removal stages

    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the loop: every query and request bounded by http_timeout,
        https peers verified against `ca_file` (else the system store)."""
        verify = client_context(self.config.ca_file)
        return httpx.AsyncClient(timeout=self.config.http_timeout, verify=verify)

    async def run(self) -> None:
        async with self.client() as http:
            while True:
                try:
                    self.last = await self.cycle(http)
                except Exception as exc:  # the loop must outlive any bug in one cycle
                    log.exception("frontend cycle failed")
                    self.last = CycleReport(self.clock(), ok=False, errors=[repr(exc)])
                await asyncio.sleep(self.config.cycle_seconds)

    # ------------------------------------------------------------------ cycle

    async def cycle(self, http: httpx.AsyncClient) -> CycleReport:
        now = self.clock()
        report = CycleReport(started=now)
        groups = self.config.groups
        pools = {p.name: p for g in groups for p, _ in self.config.group_pools(g)}
        factories = {f.name: f for g in groups for f in self.config.group_factories(g)}
        factory_groups = {
            name: [
                g.name for g in groups if name in {f.name for f in self.config.group_factories(g)}
            ]
            for name in factories
        }
        pool_answers, factory_answers = await asyncio.gather(
            asyncio.gather(*(self.sources.query_pool(http, p) for p in pools.values())),
            asyncio.gather(
                *(
                    self.sources.query_factory(http, f, factory_groups[f.name])
                    for f in factories.values()
                )
            ),
        )
        pool_by_name = dict(zip(pools, pool_answers, strict=True))
        fac_by_name = dict(zip(factories, factory_answers, strict=True))
        report.errors += [a.error for a in pool_answers if not a.ok]
        report.errors += [a.error for a in factory_answers if a.error]
        for name, answer in zip(pools, pool_answers, strict=True):
            self.faults.note(f"pool {name} query", None if answer.ok else answer.error, now)
        for name, fanswer in zip(factories, factory_answers, strict=True):
            self.faults.note(f"factory {name} query", fanswer.error or None, now)

        views: dict[str, GroupView] = {}
        blind: dict[str, str] = {}  # group -> why its demand is not trusted this cycle
        for group in groups:
            pool = merged_answer([pool_by_name[p.name] for p, _ in self.config.group_pools(group)])
            seen = await self._observe(group, pool, fac_by_name, now) if pool.ok else pool.error
            if isinstance(seen, GroupView):
                views[group.name] = seen
                continue
            blind[group.name] = seen
            if pool.ok:
                report.errors.append(f"group {group.name}: {seen}")
        totals = (
            sum(o.supply.total for v in views.values() for o in v.observations.values()),
            sum(o.supply.idle_pilots for v in views.values() for o in v.observations.values()),
        )
        results = await asyncio.gather(
            *(
                self._group_cycle(
                    http, g, views.get(g.name), blind.get(g.name, ""), fac_by_name, totals, now
                )
                for g in groups
            ),
            return_exceptions=True,
        )
        for g, result in zip(groups, results, strict=True):
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
        self.explanations.flush()
        report.duration = self.clock() - now
        self.last = report
        return report

    async def _observe(
        self, group: GroupConfig, pool: PoolAnswer, factories: dict[str, FactoryAnswer], now: float
    ) -> GroupView | str:
        """The group's demand and supply per entry, or why its demand is not trusted."""
        fviews = []
        for f in self.config.group_factories(group):
            answer = factories[f.name]
            if answer.entries is not None:
                fviews.append(
                    FactoryView(
                        name=f.name,
                        url=f.url,
                        entries=answer.entries,
                        counts=answer.counts.get(group.name, {}),
                    )
                )
        memo = self._memo.setdefault(group.name, {})
        if len(memo) > MEMO_LIMIT:  # a queue that keeps changing: start the memo again
            memo.clear()
        try:
            view = await asyncio.to_thread(
                observe_group,
                group,
                self.subject,
                pool.autoclusters,
                pool.pilots,
                fviews,
                now,
                True,
                memo,
            )
        except Exception as exc:  # e.g. an autocluster whose ad does not parse
            # Its demand is unknown, not zero: the group is frozen like a blind pool.
            log.exception("group %s: observing demand failed", group.name)
            return f"observing demand failed: {exc!r}"
        if view.expression_errors:
            # A group expression that errors hides demand: zero demand from it
            # must not start removal. Freeze the group until it is fixed.
            why = "group expression evaluates to Error: " + "; ".join(
                f"{text} ({n} times)" for text, n in sorted(view.expression_errors.items())
            )
            log.error("group %s: %s", group.name, why)
            return why
        return view

    async def _group_cycle(
        self,
        http: httpx.AsyncClient,
        group: GroupConfig,
        view: GroupView | None,
        blind: str,
        factories: dict[str, FactoryAnswer],
        totals: tuple[int, int],
        now: float,
    ) -> dict[str, Any]:
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
            if factories[f.name].entries is None:
                out["factories"][f.name] = factories[f.name].error
                continue
            entries = {
                o.entry: self._wire(d, group, start)
                for o, d in decisions.values()
                if o.factory == f.name
            }
            prefix = f"{f.name}/"
            entries.update({k[len(prefix) :]: r for k, r in kept.items() if k.startswith(prefix)})
            sends.append((f, entries))
        names = entry_sites((factories[f.name].entries or [], entries) for f, entries in sends)
        tokens, why = await self._group_tokens(http, group, pool_source, names)
        pool_tokens: PoolTokens | None = None
        if group.pools and tokens is not None:
            pool_tokens = [(pool_source.url, self.config.group_pools(group)[0][1], tokens)]
            for other, share in self.config.group_pools(group)[1:]:
                more, why = await self._group_tokens(http, group, other, names)
                if more is None:
                    tokens = None
                    break
                pool_tokens.append((other.url, share, more))
        vo_stage, vo_why = self._vo_advert(group)
        if vo_why:
            out["vo_stage"] = vo_why
        results = await asyncio.gather(
            *(
                self._put(http, group, pool_source, f, entries, tokens, vo_stage, pool_tokens)
                for f, entries in sends
            ),
            return_exceptions=True,
        )
        for (f, _), result in zip(sends, results, strict=True):
            failure = why or (
                None if result is None else (result if isinstance(result, str) else repr(result))
            )
            out["factories"][f.name] = failure or "ok"
            self.faults.note(f"group {group.name} request to factory {f.name}", failure, now)
        out["entries"] = {k: d.as_request() for k, (_, d) in decisions.items()}
        return out

    async def _group_tokens(
        self,
        http: httpx.AsyncClient,
        group: GroupConfig,
        pool: Source,
        entries: dict[str, str | None],
    ) -> tuple[GroupTokens | None, str]:
        """The group's pilot tokens for this cycle (one per entry), or why none."""
        try:
            tokens = await self.pilot_tokens.for_group(
                http, pool, self.sources.auth(pool), group, entries
            )
        except (*QUERY_ERRORS, KeyError, TypeError) as exc:
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

    def _keep_failed(
        self, group: GroupConfig, view: GroupView, memory: dict[str, policy.Memory], now: float
    ) -> dict[str, Request]:
        """Entries that could not be judged: their last request again, never removal."""
        kept: dict[str, Request] = {}
        for key, why in view.failed.items():
            m = memory.get(key)
            request = None
            if m is not None:
                request = kept[key] = without_removal(m)
                memory[key] = m.without_removal()
            self._record(group, key, now, {"failed": why, "request": request})
        return kept

    def _wire(self, d: policy.Decision, group: GroupConfig, start: str | None) -> Request:
        body = d.as_request()
        if start is not None:
            body["start_expr"] = start
        if group.container_image is not None:
            body["container_image"] = group.container_image
        return body

    def _decide(
        self,
        group: GroupConfig,
        view: GroupView,
        totals: tuple[int, int],
        memory: dict[str, policy.Memory],
        now: float,
    ) -> dict[str, tuple[Observation, policy.Decision]]:
        g = group
        knobs = policy.Knobs(
            attenuation=g.ramp_up_attenuation,
            reserve_idle=g.reserve_idle,
            max_idle_per_entry=g.max_idle_per_entry,
            running_factor=g.running_factor,
            max_running_per_entry=g.max_running_per_entry,
            proportional=g.demand_count == "proportional",
        )
        rules = policy.RemovalRules(
            max_stage=g.max_removal,
            margin=g.removal_margin,
            confirm_cycles=g.zero_demand_confirm_cycles,
            escalate_cycles=g.removal_escalate_cycles,
        )
        obs = view.observations.values()
        group_counts = (sum(o.supply.total for o in obs), sum(o.supply.idle_pilots for o in obs))
        out: dict[str, tuple[Observation, policy.Decision]] = {}
        for key, o in view.observations.items():
            try:
                levels = entry_levels(self.config, g, o, group_counts, totals)
                d = policy.decide(
                    o.demand, o.supply, levels, knobs, rules, memory.get(key, policy.Memory())
                )
                memory[key] = d.memory
                out[key] = (o, d)
                self._record(group, key, now, decision_record(o, d, None))
            except Exception as exc:  # one entry's failure must not stop the others
                log.exception("group %s entry %s: decision failed", group.name, key)
                m = memory.get(key, policy.Memory())
                d = policy.Decision(
                    idle=m.last_idle,
                    max_running=m.last_max_running,
                    memory=m,
                    reasons=(f"decision failed ({exc!r}): last request kept, no removal",),
                )
                out[key] = (o, d)
                self._record(group, key, now, decision_record(o, d, repr(exc)))
        for key, why in view.skipped.items():
            self._record(group, key, now, {"skipped": why})
        return out

    async def _put(
        self,
        http: httpx.AsyncClient,
        group: GroupConfig,
        pool: Source,
        factory: Source,
        entries: dict[str, Request],
        tokens: GroupTokens | None,
        vo_stage: dict[str, Any] | None,
        pools: PoolTokens | None = None,
    ) -> str | None:
        """Send the group's desired state; None when the factory took it, else why not."""
        if tokens is None:
            return "not sent: no pilot token"
        body = request_body(pool.url, tokens, entries, vo_stage, pools)
        return await self.sources.put_request(http, factory, group.name, body)

    async def _freeze(
        self, http: httpx.AsyncClient, group: GroupConfig, why: str, now: float
    ) -> dict[str, str]:
        """The pool is blind: keep the last request but never remove (nor count cycles)."""
        memory = self.memory.get(group.name, {})
        out: dict[str, str] = {}
        for f in self.config.group_factories(group):
            prefix = f"{f.name}/"
            mine = {k[len(prefix) :]: m for k, m in memory.items() if k.startswith(prefix)}
            for name in mine:
                self._record(group, f"{prefix}{name}", now, {"frozen": why, "request": None})
            if all(m.last_remove is RemovalStage.NO for m in mine.values()):
                out[f.name] = f"not sent: {why}"
                continue
            pool = self.config.group_pool(group)
            held = [
                (
                    p.url,
                    share,
                    GroupTokens(
                        {
                            n: t
                            for n in mine
                            if (t := self.pilot_tokens.current(p.name, group.name, n)) is not None
                        }
                    ),
                )
                for p, share in self.config.group_pools(group)
            ]
            tokens = held[0][2]
            if any(len(t.entries) < len(mine) for _, _, t in held):
                out[f.name] = f"cannot stop removal (no valid pilot token): {why}"
                continue
            entries = {n: without_removal(m) for n, m in mine.items()}
            err = await self._put(
                http, group, pool, f, entries, tokens, self._vo_advert(group)[0], held
            )
            if err is None:
                for n, m in mine.items():
                    memory[f"{prefix}{n}"] = m.without_removal()
            out[f.name] = f"removal stopped: {why}" if err is None else err
        return out

    # ------------------------------------------------------------------ explain

    def _record(self, group: GroupConfig, key: str, now: float, record: Record) -> None:
        self.explanations.add(self.cycles, group.name, key, now, record)

    def explain(
        self, entry: str | None = None, history: bool = False, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Latest (or all kept) explanations (see `Explanations.select`)."""
        return self.explanations.select(entry, history, group)
