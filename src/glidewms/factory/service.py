"""The factory's converge loop, around a pure planning function.

Each cycle: ask the backends where every active pilot is (one batched call per
backend), then for every stored frontend request and every entry it names,
`plan()` how many pilots to submit or which queued ones to remove, and do it.
The loop wakes on every PUT of a request and otherwise every `cycle_seconds`.

`plan()` is all the policy there is and has no I/O, so every clamp is tested
by a table. The loop is careful about the failures GlideinWMS operators know:
pilots the backend cannot see stay counted (no flood), a failing entry backs
off instead of filling the database with failed submissions, one exception
never stops the loop, and a killed factory recovers from the database
(`restart.py`). Held and stale pilots and the log archive are `upkeep.py`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory import restart, upkeep
from glidewms.factory import retired as retired_entries
from glidewms.factory.archive import LogArchive
from glidewms.factory.backends import (
    Backend,
    BackendContext,
    BackendError,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.pilot_args import pilot_arguments, request_problem
from glidewms.factory.pilot_health import allowance
from glidewms.factory.policy import (
    EntryRequest,
    RemovePlan,
    Tally,
    active_downtime,
    choose_victims,
    next_state,
    plan,
)
from glidewms.factory.recovery import (
    EntryHealth,
    after_failure,
    after_success,
    paused_by_operator,
    resumed,
)
from glidewms.factory.requests import token_file
from glidewms.factory.stage import Stage
from glidewms.factory.states import GlideinState
from glidewms.factory.store import FactoryStore, Glidein, StoredRequest
from glidewms.factory.token_push import TokenPush

log = logging.getLogger(__name__)

# Test hook: `after_submit` makes the factory SIGKILL itself after a submission
# returned and before its batch ids are stored (tests of restart recovery).
CRASH_HOOK = "GLIDEWMS_FACTORY_TEST_CRASH"
TOKEN_MARGIN_SECONDS = 60.0  # do not start pilots with a token about to expire


class Factory:
    """The converge loop and the state it needs between cycles."""

    def __init__(
        self,
        config: FactoryConfig,
        *,
        public_url: str,
        store: FactoryStore,
        stage: Stage,
        backends: dict[str, Backend],
        context: BackendContext | None = None,
    ) -> None:
        self.config = config
        self.public_url = public_url
        self.store = store
        self.stage = stage
        self.backends = backends
        self.cycles = 0
        self.health: dict[str, EntryHealth] = {}  # submission failures and pauses
        self._wake: asyncio.Event | None = None  # bound to the loop that runs us
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run_tag = secrets.token_hex(3)
        self._seq = itertools.count(1)
        self._logged: dict[tuple[str, str, str], str] = {}
        self.archive = LogArchive(config.state_dir / "archive", config.log_retention_days * 86400)
        self.purged_at = 0.0  # when the log archive was last purged
        self.downtimes: list[dict[str, Any]] = []  # as of the last cycle
        self._active: dict[tuple[str, str, str], list[Glidein]] = {}  # this cycle's, by request
        self.tokens = TokenPush()
        self.retired: dict[str, EntryConfig] = {}  # removed by a reload; pilots may remain
        self.context = context  # the backends' (retired entries are added to it)
        self.clock: Callable[[], float] = time.time  # entry health's (tests move it)
        self._cycle_submitted: Counter[str] = Counter()  # per entry, this cycle

    def watched_entry(self, name: str) -> EntryConfig | None:
        """An entry pilots may still run at: configured, or removed by a reload."""
        return self.config.entry(name) or self.retired.get(name)

    @property
    def entry_errors(self) -> dict[str, str]:
        """The last submission error per entry that has one."""
        return {k: h.last_error for k, h in self.health.items() if h.last_error}

    def pause_view(self, entry: EntryConfig) -> dict[str, object] | None:
        return self.health.get(entry.name, EntryHealth()).view(entry.recovery)

    def streak(self, entry: str) -> tuple[int, str | None]:
        """The entry's pilot failure streak and the last failure's reason."""
        health = self.health.get(entry, EntryHealth())
        return health.pilot_failures, health.last_pilot_failure

    async def set_health(self, entry: str, health: EntryHealth) -> None:
        if self.health.get(entry, EntryHealth()) == health:
            return
        if health == EntryHealth():
            self.health.pop(entry, None)
            await asyncio.to_thread(self.store.set_entry_health, entry, None)
        else:
            self.health[entry] = health
            await asyncio.to_thread(self.store.set_entry_health, entry, health.__dict__)

    async def resume(self, entry: str, who: str = "an operator") -> bool:
        """An operator's resume: the entry submits at the next cycle, its failures and
        streak forgotten. False if it was neither paused nor backing off."""
        health = self.health.get(entry, EntryHealth())
        if not health.paused and health.failures == 0 and health.pilot_failures == 0:
            return False
        await self.set_health(entry, resumed(health))
        log.warning(
            "entry %s resumed by %s (was %s)",
            entry,
            who,
            f"paused: {health.paused_reason}" if health.paused else "backing off",
        )
        self.wake()
        return True

    async def pause(self, entry: str, reason: str, who: str = "an operator") -> None:
        """An operator's pause: no pilot (not even a probe) until resumed."""
        health = self.health.get(entry, EntryHealth())
        await self.set_health(entry, paused_by_operator(health, reason, self.clock()))
        log.warning("entry %s paused by %s: %s", entry, who, reason)

    # -- requests as the loop sees them ------------------------------------------

    @property
    def credentials(self) -> Path:
        return self.config.state_dir / "credentials"

    def token_file(self, frontend: str, group: str, entry: str | None = None) -> Path:
        """The group's pilot token file, or an entry's own (requests.token_file)."""
        return token_file(self.credentials, frontend, group, entry)

    def pilot_token_file(self, request: StoredRequest, entry: str) -> Path:
        """The token file pilots of `entry` get: its own if the request brought one."""
        if entry in (request.entry_tokens or {}):
            return self.token_file(request.frontend, request.group, entry)
        return self.token_file(request.frontend, request.group)

    def token_files(self, frontend: str, group: str, entry: str) -> list[Path]:
        """Every token file pilots of (frontend, group) at `entry` may have been given."""
        return [self.token_file(frontend, group), self.token_file(frontend, group, entry)]

    def request_errors(self, request: StoredRequest, now: float | None = None) -> dict[str, str]:
        """Why (part of) a request is not acted on, per entry name."""
        errors: dict[str, str] = {}
        now = time.time() if now is None else now
        for name in request.entries:
            entry = self.config.entry(name)
            expires = request.token_expiry(name)
            if expires is not None and expires < now + TOKEN_MARGIN_SECONDS:
                errors[name] = "pilot token expired or about to; PUT the request with a fresh one"
            elif entry is None:
                errors[name] = f"unknown entry {name!r}"
            elif not entry.allows(request.frontend):
                errors[name] = f"entry {name!r} does not accept frontend {request.frontend!r}"
            elif not entry.enabled:
                errors[name] = f"entry {name!r} is disabled: no new pilots"
            elif (problem := request_problem(request, name)) is not None:
                errors[name] = problem
        return errors

    def _log_once(self, request: StoredRequest, name: str, message: str) -> None:
        key = (request.frontend, request.group, name)
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning(
                "request %s/%s, entry %s: %s", request.frontend, request.group, name, message
            )

    # -- the loop -----------------------------------------------------------------

    def wake(self) -> None:
        """Run a cycle now (called on every PUT of a request, from the loop's thread)."""
        if self._wake is not None:
            self._wake.set()

    def nudge(self) -> None:
        """`wake()` from another thread (a test driving cycles one by one)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.wake)

    async def run(self) -> None:
        """Cycle until cancelled; a failed cycle is logged and the next one runs."""
        self._wake = wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            await restart.recover(self)
        except Exception:
            log.exception("recovery after restart failed; converging anyway")
        while True:
            wake.clear()
            try:
                await self.cycle()
            except Exception:
                log.exception("factory cycle failed; retrying next cycle")
            self.cycles += 1
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.config.cycle_seconds)

    async def cycle(self) -> None:
        await restart.adopt_unrecorded(self)  # nothing to do unless a look-up failed at start
        await self.refresh()
        await upkeep.account_pilots(self)
        await self.push_tokens()
        await upkeep.maintain(self)
        await self.converge()
        await upkeep.archive_logs(self)

    async def refresh(self) -> None:
        """Ask each backend, in one call, about all its active pilots."""
        active = await asyncio.to_thread(self.store.active)
        await retired_entries.drop_ended(self, active)
        changes: dict[str, GlideinState] = {}
        for kind, group in restart.by_backend(active).items():
            backend = self.backends.get(kind)
            tracked = [g for g in group if g.backend_id]
            if backend is None or not tracked:
                continue
            try:
                seen = await backend.status([g.backend_id for g in tracked if g.backend_id])
            except Exception:
                log.exception("backend %s status failed; pilots keep their states", kind)
                continue
            for g in tracked:
                new = next_state(g.state, seen.get(g.backend_id or "", PilotState.unknown))
                if new is not g.state:
                    changes[g.glidein_id] = new
        if changes:
            await asyncio.to_thread(self.store.set_states, changes)

    async def push_tokens(self) -> None:
        """Renewed tokens to running pilots that read a copy (token_push.py)."""
        active = await asyncio.to_thread(self.store.active)
        await self.tokens.push(active, self.watched_entry, self.backends, self.token_files)

    async def converge(self) -> None:
        """Plan and act for every (request, entry); one failing entry does not stop others."""
        requests = await asyncio.to_thread(self.store.requests)
        active = await asyncio.to_thread(self.store.active)
        tally = Tally(active)
        self.downtimes = await asyncio.to_thread(self.store.downtimes)
        now = time.time()
        self._active = {}
        self._cycle_submitted = Counter()
        for g in active:
            self._active.setdefault((g.entry, g.frontend, g.group), []).append(g)
        for request in requests:
            errors = self.request_errors(request, now)
            for name, raw in request.entries.items():
                try:
                    await self._converge_entry(request, name, raw, errors, tally, now)
                except Exception:
                    log.exception(
                        "entry %s: converging %s/%s failed", name, request.frontend, request.group
                    )

    async def _converge_entry(
        self,
        request: StoredRequest,
        name: str,
        raw: dict[str, object],
        errors: dict[str, str],
        tally: Tally,
        now: float,
    ) -> None:
        entry = self.config.entry(name)
        message = errors.get(name)
        if entry is None or not entry.allows(request.frontend):
            self._log_once(request, name, message or "ignored")
            return
        counts = tally.counts(name, request.frontend, request.group)
        downtime = active_downtime(self.downtimes, name, request.frontend, now)
        reason = None if downtime is None else str(downtime["reason"])
        decision = plan(entry, EntryRequest.model_validate(raw), counts, reason, request.frontend)
        if isinstance(decision, RemovePlan):
            await self._remove(entry, request, decision, tally)
        elif decision.count > 0 and message:
            self._log_once(request, name, message)
        elif decision.count > 0:
            health = self.health.get(name, EntryHealth())
            allowed = allowance(health, self.clock(), entry.recovery, entry.max_per_cycle)
            count = decision.count
            if allowed.count is not None:
                count = min(count, allowed.count - self._cycle_submitted[name])
            if count <= 0:
                if allowed.reason is not None and allowed.count == 0:
                    self._log_once(request, name, f"not submitting: {allowed.reason}")
                return
            self._cycle_submitted[name] += count
            started = await self._submit(entry, request, count, tally)
            if allowed.probe and started:
                probe = self.health.get(name, EntryHealth())
                await self.set_health(name, replace(probe, probe_id=started[0]))
                log.warning(
                    "entry %s: probe pilot %s sent (%s)", name, started[0], health.paused_reason
                )

    # -- actions ------------------------------------------------------------------

    def new_glidein_id(self, entry: str) -> str:
        return f"{entry}-{self._run_tag}-{next(self._seq)}"

    def arguments(
        self, entry: EntryConfig, request: StoredRequest, glidein_id: str
    ) -> tuple[str, ...]:
        """The bootstrap's long options (pilot_args.py); no secrets here."""
        return pilot_arguments(
            entry, request, glidein_id, self.public_url, self.stage, ca_file=self.config.ca_file
        )

    async def _record_failure(self, entry: EntryConfig, error: str) -> None:
        now = self.clock()
        health = after_failure(
            self.health.get(entry.name, EntryHealth()),
            error,
            now,
            self.config.cycle_seconds,
            entry.recovery,
        )
        await self.set_health(entry.name, health)
        if health.paused_at == now:
            log.error(
                "entry %s paused after %d failed submissions (%s); resume it with "
                "`glidewms factory entry resume %s`",
                entry.name,
                health.failures,
                error,
                entry.name,
            )
        else:
            log.error(
                "entry %s: submission failed (%s); next try in %.1fs",
                entry.name,
                error,
                health.next_try - now,
            )

    async def _submit(
        self, entry: EntryConfig, request: StoredRequest, count: int, tally: Tally
    ) -> list[str]:
        """Submit `count` pilots; the glidein ids of those the backend took."""
        token_file = self.pilot_token_file(request, entry.name)
        if not token_file.is_file():
            self._log_once(request, entry.name, "no pilot token stored; PUT the request again")
            return []
        now = time.time()
        glideins = [
            Glidein.submitted(
                self.new_glidein_id(entry.name),
                entry.name,
                entry.backend,
                request.frontend,
                request.group,
                now,
            )
            for _ in range(count)
        ]
        # Recorded before submission: a factory killed mid-submit finds them on restart.
        await asyncio.to_thread(self.store.add_glideins, glideins)
        tally.add(entry.name, request.frontend, request.group, GlideinState.queued, count)
        pilots = [
            PilotSubmission(g.glidein_id, self.arguments(entry, request, g.glidein_id), token_file)
            for g in glideins
        ]
        error: str | None = None
        try:
            backend_ids = await self.backends[entry.backend].submit(entry, pilots)
        except BackendError as exc:
            backend_ids, error = exc.submitted, str(exc)
        except Exception as exc:
            backend_ids, error = [], f"{type(exc).__name__}: {exc}"
        if os.environ.get(CRASH_HOOK) == "after_submit":  # tests: a kill at the worst instant
            os.kill(os.getpid(), signal.SIGKILL)
        started = dict(zip((g.glidein_id for g in glideins), backend_ids, strict=False))
        await asyncio.to_thread(self.store.set_backend_ids, started)
        failed = {g.glidein_id: GlideinState.failed for g in glideins[len(started) :]}
        if failed:
            await asyncio.to_thread(self.store.set_states, failed, "submit_failed")
            key = (entry.name, request.frontend, request.group)
            tally.add(*key, GlideinState.queued, -len(failed))
            await self._record_failure(entry, error or "backend returned fewer ids than pilots")
        else:
            await self.set_health(
                entry.name, after_success(self.health.get(entry.name, EntryHealth()))
            )
        log.info(
            "entry %s: submitted %d pilot(s) for %s/%s",
            entry.name,
            len(started),
            request.frontend,
            request.group,
        )
        return list(started)

    async def _remove(
        self, entry: EntryConfig, request: StoredRequest, decision: RemovePlan, tally: Tally
    ) -> None:
        """Remove the pilots `choose_victims` picks (held, queued, then running ones)."""
        key = (entry.name, request.frontend, request.group)
        mine = [g for g in self._active.get(key, []) if g.state is not GlideinState.removing]
        victims = choose_victims(mine, decision)
        if not victims:
            return
        await asyncio.to_thread(
            self.store.set_states, {g.glidein_id: GlideinState.removing for g in victims}
        )
        for g in victims:
            tally.add(*key, g.state, -1)
            tally.add(*key, GlideinState.removing, 1)
        gone = {g.glidein_id for g in victims}
        self._active[key] = [g for g in self._active[key] if g.glidein_id not in gone]
        await self.backends[entry.backend].remove([g.backend_id for g in victims if g.backend_id])
        running = sum(g.state is GlideinState.running for g in victims)
        log.info(
            "entry %s: removing %d pilot(s) of %s/%s (%d running): %s",
            entry.name,
            len(victims),
            request.frontend,
            request.group,
            running,
            decision.reason,
        )
