"""The factory's converge loop, around a pure planning function.

Each cycle: ask the backends where every active pilot is (one batched call per
backend), then for every stored frontend request and every entry it names,
`plan()` how many pilots to submit or which queued ones to remove, and do it.
The loop wakes on every PUT of a request and otherwise every `cycle_seconds`.

`plan()` is all the policy there is and has no I/O, so every clamp is tested
by a table. The loop is careful about the failures GlideinWMS operators know:
pilots the backend cannot see stay counted (no flood), a failing entry backs
off instead of filling the database with failed submissions, one exception
never stops the loop, and a killed factory recovers from the database.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory import retired as retired_entries
from glidewms.factory.archive import LogArchive
from glidewms.factory.backends import (
    Backend,
    BackendContext,
    BackendError,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.pilot_args import pilot_arguments
from glidewms.factory.policy import (
    Counts,
    EntryRequest,
    RemoveMode,
    RemovePlan,
    SubmitPlan,
    Tally,
    active_downtime,
    attribute_text,
    choose_victims,
    next_state,
    plan,
)
from glidewms.factory.recovery import (
    EntryHealth,
    HeldAction,
    after_failure,
    after_success,
    held_action,
    resumed,
    stale_reason,
    submit_blocked,
)
from glidewms.factory.requests import token_file
from glidewms.factory.stage import Stage
from glidewms.factory.store import FactoryStore, Glidein, GlideinState, StoredRequest
from glidewms.factory.token_push import TokenPush

log = logging.getLogger(__name__)

__all__ = [
    "Counts",
    "EntryRequest",
    "Factory",
    "RemoveMode",
    "RemovePlan",
    "SubmitPlan",
    "Tally",
    "attribute_text",
    "next_state",
    "plan",
]

# Test hook: `after_submit` makes the factory SIGKILL itself after a submission
# returned and before its batch ids are stored (tests of restart recovery).
CRASH_HOOK = "GLIDEWMS_FACTORY_TEST_CRASH"
TOKEN_MARGIN_SECONDS = 60.0  # do not start pilots with a token about to expire
PURGE_EVERY_SECONDS = 3600.0
ARCHIVE_PER_CYCLE = 200


class Factory:
    """The converge loop and the state it needs between cycles."""

    def __init__(self, config: FactoryConfig, public_url: str, store: FactoryStore,
                 stage: Stage, backends: dict[str, Backend],
                 context: BackendContext | None = None) -> None:  # fmt: skip
        self.config = config
        self.public_url = public_url
        self.store = store
        self.stage = stage
        self.backends = backends
        self.cycles = 0
        self.health: dict[str, EntryHealth] = {}  # submission failures and pauses
        self._wake: asyncio.Event | None = None  # bound to the loop that runs us
        self._run_tag = secrets.token_hex(3)
        self._seq = itertools.count(1)
        self._logged: dict[tuple[str, str, str], str] = {}
        self.archive = LogArchive(config.state_dir / "archive",
                                  config.log_retention_days * 86400)  # fmt: skip
        self._purged_at = 0.0
        self.downtimes: list[dict[str, Any]] = []  # as of the last cycle
        self._active: dict[tuple[str, str, str], list[Glidein]] = {}  # this cycle's, by request
        self.tokens = TokenPush()
        self.retired: dict[str, EntryConfig] = {}  # removed by a reload; pilots may remain
        self.context = context  # the backends' (retired entries are added to it)

    def watched_entry(self, name: str) -> EntryConfig | None:
        """An entry pilots may still run at: configured, or removed by a reload."""
        return self.config.entry(name) or self.retired.get(name)

    @property
    def entry_errors(self) -> dict[str, str]:
        """The last submission error per entry that has one."""
        return {k: h.last_error for k, h in self.health.items() if h.last_error}

    def pause_view(self, entry: EntryConfig) -> dict[str, object] | None:
        return self.health.get(entry.name, EntryHealth()).view(entry.recovery)

    async def _set_health(self, entry: str, health: EntryHealth) -> None:
        if self.health.get(entry, EntryHealth()) == health:
            return
        if health == EntryHealth():
            self.health.pop(entry, None)
            await asyncio.to_thread(self.store.set_entry_health, entry, None)
        else:
            self.health[entry] = health
            await asyncio.to_thread(self.store.set_entry_health, entry, health.__dict__)

    async def resume(self, entry: str) -> bool:
        """An operator's resume: the entry submits at the next cycle. False if not paused."""
        health = self.health.get(entry, EntryHealth())
        if not health.paused and health.failures == 0:
            return False
        await self._set_health(entry, resumed(health))
        log.warning("entry %s resumed by an operator", entry)
        self.wake()
        return True

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

    async def run(self) -> None:
        """Cycle until cancelled; a failed cycle is logged and the next one runs."""
        self._wake = wake = asyncio.Event()
        try:
            await self.recover()
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

    async def recover(self) -> None:
        """After a restart: find interrupted submissions, re-arm interrupted removals.

        A glidein without a backend id was recorded before its submission and
        the factory stopped before it stored the batch id: the batch job may
        exist. The backend is asked to find such pilots by the glidein ids
        their jobs carry (`Backend.adopt`); the ones it finds are tracked
        again, the others never reached the site and are marked failed. So a
        kill at any instant neither loses a pilot nor submits it twice.
        """
        stored = await asyncio.to_thread(self.store.entry_health)
        self.health = {name: EntryHealth(**values) for name, values in stored.items()}
        await retired_entries.load(self)
        await self.adopt_unrecorded()
        active = await asyncio.to_thread(self.store.active)
        for kind, group in _by_backend(active).items():
            removing = [g.backend_id for g in group if g.state is GlideinState.removing]
            backend = self.backends.get(kind)
            if removing and backend is not None:
                await backend.remove([b for b in removing if b])

    async def adopt_unrecorded(self) -> None:
        """Track again the pilots whose submission a stop interrupted (see `recover`)."""
        unrecorded = await asyncio.to_thread(self.store.unrecorded)
        if not unrecorded:
            return
        found: dict[str, str] = {}
        unsure: set[str] = set()
        unwatched: set[str] = set()  # of entries this factory no longer knows: lost
        by_entry: dict[str, list[Glidein]] = {}
        for g in sorted(unrecorded, key=submission_order):
            by_entry.setdefault(g.entry, []).append(g)
        for name, group in by_entry.items():
            entry, backend = self.watched_entry(name), self.backends.get(group[0].backend)
            if entry is None or backend is None:
                unwatched.update(g.glidein_id for g in group)
                continue
            try:
                found.update(await backend.adopt(entry, [g.glidein_id for g in group]))
            except Exception as exc:  # cannot tell: keep counting them, ask next cycle
                log.warning("entry %s: cannot look for interrupted submissions: %s", name, exc)
                unsure.update(g.glidein_id for g in group)
        if found:
            await asyncio.to_thread(self.store.set_backend_ids, found)
        lost = {g.glidein_id: GlideinState.failed for g in unrecorded
                if g.glidein_id not in found.keys() | unsure | unwatched}  # fmt: skip
        log.warning("%d submission(s) were interrupted by a factory stop: %d found at the "
                    "site, %d never reached it, %d of entries no longer configured (lost)",
                    len(unrecorded), len(found), len(lost), len(unwatched))  # fmt: skip
        if lost:
            await asyncio.to_thread(self.store.set_states, lost, "submit_failed")
        if unwatched:  # cannot be asked about: neither submit_failed nor counted forever
            await asyncio.to_thread(self.store.set_states,
                                    dict.fromkeys(unwatched, GlideinState.failed), "lost")

    async def cycle(self) -> None:
        await self.adopt_unrecorded()  # nothing to do unless a look-up failed at recovery
        await self.refresh()
        await self.push_tokens()
        await self.maintain()
        await self.converge()
        await self.archive_logs()

    async def archive_logs(self) -> None:
        """Fetch the logs of pilots that ended into the archive; purge old ones hourly."""
        done = await asyncio.to_thread(self.store.to_archive, ARCHIVE_PER_CYCLE)
        archived: list[str] = []
        for g in done:
            backend = self.backends.get(g.backend)
            if backend is None or g.backend_id is None:
                continue
            try:
                logs = await backend.logs(g.backend_id)
                await asyncio.to_thread(self.archive.store_output, g.entry, g.frontend,
                                        g.glidein_id, logs.stdout, logs.stderr)  # fmt: skip
            except Exception as exc:
                log.warning("cannot archive the logs of %s: %s", g.glidein_id, exc)
            archived.append(g.glidein_id)  # tried once: a lost log is not retried forever
        await asyncio.to_thread(self.store.mark_archived, archived, time.time())
        now = time.time()
        if now - self._purged_at > PURGE_EVERY_SECONDS:
            self._purged_at = now
            purged = await asyncio.to_thread(self.archive.purge, now)
            if purged:
                log.info("log archive: %d pilot(s) past retention removed", purged)

    async def refresh(self) -> None:
        """Ask each backend, in one call, about all its active pilots."""
        active = await asyncio.to_thread(self.store.active)
        await retired_entries.drop_ended(self, active)
        changes: dict[str, GlideinState] = {}
        for kind, group in _by_backend(active).items():
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

    async def maintain(self) -> None:
        """Release or remove held pilots and remove stale ones (recovery.py decides)."""
        active = await asyncio.to_thread(self.store.active)
        now = time.time()
        release: dict[str, list[Glidein]] = {}
        remove: dict[str, list[tuple[Glidein, str]]] = {}
        for g in active:
            entry, backend = self.watched_entry(g.entry), self.backends.get(g.backend)
            if entry is None or backend is None or not g.backend_id:
                continue
            action = held_action(g, now, entry.recovery, backend.can_release)
            if action is HeldAction.RELEASE:
                release.setdefault(g.backend, []).append(g)
            elif action is HeldAction.REMOVE:
                remove.setdefault(g.backend, []).append((g, "held"))
            elif (why := stale_reason(g, entry, now)) is not None:
                remove.setdefault(g.backend, []).append((g, why))
        for kind, pilots in release.items():
            try:
                await self.backends[kind].release([g.backend_id for g in pilots if g.backend_id])
            except Exception as exc:
                log.warning("%s: releasing %d held pilot(s) failed: %s", kind, len(pilots), exc)
                continue
            await asyncio.to_thread(self.store.count_releases, [g.glidein_id for g in pilots])
            log.info("%s: released %d held pilot(s)", kind, len(pilots))
        for kind, victims in remove.items():
            for reason in sorted({why for _, why in victims}):
                chosen = [g for g, why in victims if why == reason]
                await asyncio.to_thread(self.store.set_states,
                                        dict.fromkeys((g.glidein_id for g in chosen),
                                                      GlideinState.removing), reason)  # fmt: skip
                await self.backends[kind].remove([g.backend_id for g in chosen if g.backend_id])
                log.warning("%s: removed %d pilot(s): %s", kind, len(chosen), reason)

    async def converge(self) -> None:
        """Plan and act for every (request, entry); one failing entry does not stop others."""
        requests = await asyncio.to_thread(self.store.requests)
        active = await asyncio.to_thread(self.store.active)
        tally = Tally(active)
        self.downtimes = await asyncio.to_thread(self.store.downtimes)
        now = time.time()
        self._active = {}
        for g in active:
            self._active.setdefault((g.entry, g.frontend, g.group), []).append(g)
        for request in requests:
            errors = self.request_errors(request, now)
            for name, raw in request.entries.items():
                try:
                    await self._converge_entry(request, name, raw, errors, tally, now)
                except Exception:
                    log.exception("entry %s: converging %s/%s failed", name, request.frontend,
                                  request.group)  # fmt: skip

    async def _converge_entry(self, request: StoredRequest, name: str, raw: dict[str, object],
                              errors: dict[str, str], tally: Tally, now: float) -> None:
        entry = self.config.entry(name)
        message = errors.get(name)
        if entry is None or not entry.allows(request.frontend):
            self._log_once(request, name, message or "ignored")
            return
        counts = tally.counts(name, request.frontend, request.group)
        downtime = active_downtime(self.downtimes, name, request.frontend, now)
        reason = None if downtime is None else str(downtime["reason"])
        decision = plan(entry, EntryRequest.model_validate(raw), counts, reason,
                        request.frontend)  # fmt: skip
        if isinstance(decision, RemovePlan):
            await self._remove(entry, request, decision, tally)
        elif decision.count > 0 and message:
            self._log_once(request, name, message)
        elif decision.count > 0:
            health = self.health.get(name, EntryHealth())
            if submit_blocked(health, now, entry.recovery) is None:
                await self._submit(entry, request, decision.count, tally)

    # -- actions ------------------------------------------------------------------

    def new_glidein_id(self, entry: str) -> str:
        return f"{entry}-{self._run_tag}-{next(self._seq)}"

    def arguments(
        self, entry: EntryConfig, request: StoredRequest, glidein_id: str
    ) -> tuple[str, ...]:
        """The bootstrap's long options (pilot_args.py); no secrets here."""
        return pilot_arguments(entry, request, glidein_id, self.public_url, self.stage)

    async def _record_failure(self, entry: EntryConfig, error: str) -> None:
        now = time.time()
        health = after_failure(self.health.get(entry.name, EntryHealth()), error, now,
                               self.config.cycle_seconds, entry.recovery)  # fmt: skip
        await self._set_health(entry.name, health)
        if health.paused_at == now:
            log.error("entry %s paused after %d failed submissions (%s); resume it with "
                      "`glidewms factory entry resume %s`", entry.name, health.failures, error,
                      entry.name)  # fmt: skip
        else:
            log.error("entry %s: submission failed (%s); next try in %.1fs", entry.name, error,
                      health.next_try - now)  # fmt: skip

    async def _submit(
        self, entry: EntryConfig, request: StoredRequest, count: int, tally: Tally
    ) -> None:
        token_file = self.pilot_token_file(request, entry.name)
        if not token_file.is_file():
            self._log_once(request, entry.name, "no pilot token stored; PUT the request again")
            return
        now = time.time()
        glideins = [
            Glidein.submitted(self.new_glidein_id(entry.name), entry.name, entry.backend,
                              request.frontend, request.group, now)
            for _ in range(count)
        ]  # fmt: skip
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
            await self._set_health(entry.name, after_success(self.health.get(entry.name,
                                                                             EntryHealth())))
        log.info("entry %s: submitted %d pilot(s) for %s/%s", entry.name, len(started),
                 request.frontend, request.group)  # fmt: skip

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
        log.info("entry %s: removing %d pilot(s) of %s/%s (%d running): %s", entry.name,
                 len(victims), request.frontend, request.group, running,
                 decision.reason)  # fmt: skip


def submission_order(g: Glidein) -> tuple[float, str, int]:
    """Glideins in the order they were handed to the backend: ids end in a counter."""
    stem, _, seq = g.glidein_id.rpartition("-")
    return (g.submitted_at, stem, int(seq) if seq.isdigit() else 0)


def _by_backend(glideins: list[Glidein]) -> dict[str, list[Glidein]]:
    out: dict[str, list[Glidein]] = {}
    for g in glideins:
        out.setdefault(g.backend, []).append(g)
    return out
