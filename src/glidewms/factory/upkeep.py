"""The loop's chores around converging: entry health from pilots, held and stale
pilots, and the log archive.

`recovery.py` and `pilot_health.py` decide (pure); this module acts on what
they decide, once per cycle: the news of pilots (registered, ended) is counted
into their entries' health, which pauses and resumes entries (logged with the
reason); held pilots are released a bounded number of times or removed, stale
ones (forgotten in a queue, far past their walltime) removed, and the logs of
pilots that ended fetched from their backend into the archive, which is
purged of pilots past retention once an hour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from glidewms.config.factory import RecoveryConfig
from glidewms.factory.pilot_health import Outcome, Verdict, after_pilot, judge, probe_delay
from glidewms.factory.recovery import BY_PILOTS, EntryHealth, HeldAction, held_action, stale_reason
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein

if TYPE_CHECKING:
    from glidewms.factory.service import Factory

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 3600.0
ARCHIVE_PER_CYCLE = 200


JUDGED_PER_CYCLE = 2000


async def account_pilots(factory: Factory) -> None:
    """Count what pilots did into their entries' health (pilot_health.py), log the
    failures, pauses and resumes, and mark the pilots counted."""
    news = await asyncio.to_thread(factory.store.to_judge, JUDGED_PER_CYCLE)
    marks: dict[str, str] = {}
    for g in news:
        verdict = judge(g)
        if verdict is None:
            continue
        marks[g.glidein_id] = verdict.mark
        entry = factory.watched_entry(g.entry)
        if entry is None:
            continue
        before = factory.health.get(g.entry, EntryHealth())
        now = factory.clock()
        after = after_pilot(before, verdict, now, entry.recovery)
        _log_verdict(g.entry, verdict, after)
        _log_change(g.entry, verdict, before, after, now, entry.recovery)
        await factory.set_health(g.entry, after)
    if marks:
        await asyncio.to_thread(factory.store.mark_counted, marks)


def _log_verdict(entry: str, v: Verdict, after: EntryHealth) -> None:
    if v.outcome is not Outcome.FAILURE:
        return
    if v.check is not None:
        log.warning(
            "entry %s: pilot %s failed validation at %s: %s (streak %d)",
            entry,
            v.glidein_id,
            v.check,
            v.reason,
            after.pilot_failures,
        )
    else:
        log.warning(
            "entry %s: pilot %s failed: %s (streak %d)",
            entry,
            v.glidein_id,
            v.reason,
            after.pilot_failures,
        )


def _log_change(
    entry: str,
    v: Verdict,
    before: EntryHealth,
    after: EntryHealth,
    now: float,
    recovery: RecoveryConfig,
) -> None:
    """A pause, a resume or a failed probe, with its reason."""
    if before.pause_kind != BY_PILOTS and after.pause_kind == BY_PILOTS:
        log.error(
            "entry %s paused: %s; a probe pilot goes in %.0fs (or `glidewms factory entry "
            "resume %s`)",
            entry,
            after.paused_reason,
            (after.probe_at or now) - now,
            entry,
        )
    elif before.pause_kind == BY_PILOTS and after.pause_kind is None:
        log.warning(
            "entry %s resumed: pilot %s %s (it was paused: %s)",
            entry,
            v.glidein_id,
            "validated and registered" if v.started else f"did its work ({v.reason})",
            before.paused_reason,
        )
    elif before.probe_id is not None and after.probe_id is None and after.paused:
        log.warning(
            "entry %s: probe pilot %s %s; next probe in %.0fs",
            entry,
            v.glidein_id,
            "failed" if v.outcome is Outcome.FAILURE else f"ended ({v.reason})",
            probe_delay(after.probes, recovery),
        )


async def maintain(factory: Factory) -> None:
    """Release or remove held pilots and remove stale ones (recovery.py decides)."""
    active = await asyncio.to_thread(factory.store.active)
    now = time.time()
    release: dict[str, list[Glidein]] = {}
    remove: dict[str, list[tuple[Glidein, str]]] = {}
    for g in active:
        entry, backend = factory.watched_entry(g.entry), factory.backends.get(g.backend)
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
            await factory.backends[kind].release([g.backend_id for g in pilots if g.backend_id])
        except Exception as exc:
            log.warning("%s: releasing %d held pilot(s) failed: %s", kind, len(pilots), exc)
            continue
        await asyncio.to_thread(factory.store.count_releases, [g.glidein_id for g in pilots])
        log.info("%s: released %d held pilot(s)", kind, len(pilots))
    for kind, victims in remove.items():
        for reason in sorted({why for _, why in victims}):
            chosen = [g for g, why in victims if why == reason]
            await asyncio.to_thread(
                factory.store.set_states,
                dict.fromkeys((g.glidein_id for g in chosen), GlideinState.removing),
                reason,
            )
            await factory.backends[kind].remove([g.backend_id for g in chosen if g.backend_id])
            log.warning("%s: removed %d pilot(s): %s", kind, len(chosen), reason)


async def archive_logs(factory: Factory) -> None:
    """Fetch the logs of pilots that ended into the archive; purge old ones hourly."""
    done = await asyncio.to_thread(factory.store.to_archive, ARCHIVE_PER_CYCLE)
    archived: list[str] = []
    for g in done:
        backend = factory.backends.get(g.backend)
        if backend is None or g.backend_id is None:
            continue
        try:
            logs = await backend.logs(g.backend_id)
            await asyncio.to_thread(
                factory.archive.store_output,
                g.entry,
                g.frontend,
                g.glidein_id,
                logs.stdout,
                logs.stderr,
            )
        except Exception as exc:
            log.warning("cannot archive the logs of %s: %s", g.glidein_id, exc)
        archived.append(g.glidein_id)  # tried once: a lost log is not retried forever
    await asyncio.to_thread(factory.store.mark_archived, archived, time.time())
    now = time.time()
    if now - factory.purged_at > PURGE_EVERY_SECONDS:
        factory.purged_at = now
        purged = await asyncio.to_thread(factory.archive.purge, now)
        if purged:
            log.info("log archive: %d pilot(s) past retention removed", purged)
        rows = await asyncio.to_thread(
            factory.store.purge_ended, now - factory.config.glidein_retention_days * 86400
        )
        if rows:
            log.info("%d ended pilot row(s) past retention removed", rows)
