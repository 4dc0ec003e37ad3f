"""The loop's chores around converging: held and stale pilots, and the log archive.

`recovery.py` decides (pure); this module acts on what it decides, once per
cycle: held pilots are released a bounded number of times or removed, stale
ones (forgotten in a queue, far past their walltime) removed, and the logs of
pilots that ended fetched from their backend into the archive, which is
purged of pilots past retention once an hour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from glidewms.factory.recovery import HeldAction, held_action, stale_reason
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein

if TYPE_CHECKING:
    from glidewms.factory.service import Factory

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 3600.0
ARCHIVE_PER_CYCLE = 200


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
