"""What a restarted factory does before it converges: find what a stop interrupted.

The store is a write-ahead record: a glidein is stored before its submission
and gets its backend id after. A glidein without a backend id was recorded,
then the factory stopped before it stored the batch id: the batch job may
exist. The backend is asked to find such pilots by the glidein ids their jobs
carry (`Backend.adopt`); the ones it finds are tracked again, the others never
reached the site and are marked failed. So a kill at any instant neither loses
a pilot nor submits it twice. Removals a stop interrupted are asked again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING

from glidewms.factory import retired as retired_entries
from glidewms.factory.recovery import EntryHealth
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein

if TYPE_CHECKING:
    from glidewms.factory.service import Factory

log = logging.getLogger(__name__)


async def recover(factory: Factory) -> None:
    """After a restart: entry pauses and retired entries back, interrupted submissions
    found, interrupted removals re-armed."""
    stored = await asyncio.to_thread(factory.store.entry_health)
    factory.health = {name: EntryHealth(**values) for name, values in stored.items()}
    for name, health in sorted(factory.health.items()):
        if health.paused:
            log.warning(
                "entry %s is still paused (by %s since %.0f): %s",
                name,
                health.pause_kind,
                health.paused_at or 0.0,
                health.paused_reason,
            )
    await retired_entries.load(factory)
    await adopt_unrecorded(factory)
    active = await asyncio.to_thread(factory.store.active)
    rearmed = 0
    for kind, group in by_backend(active).items():
        removing = [g.backend_id for g in group if g.state is GlideinState.removing]
        backend = factory.backends.get(kind)
        if removing and backend is not None:
            await backend.remove([b for b in removing if b])
            rearmed += len(removing)
    per_entry = Counter(g.entry for g in active)
    if active:
        log.info(
            "after a restart: tracking %d pilot(s) (%s); %d removal(s) asked again",
            len(active),
            ", ".join(f"{name} {n}" for name, n in sorted(per_entry.items())),
            rearmed,
        )


async def adopt_unrecorded(factory: Factory) -> None:
    """Track again the pilots whose submission a stop interrupted (module docstring).

    A backend that cannot tell leaves them counted as they are, to be asked
    again next cycle; those of entries this factory no longer knows are lost.
    """
    unrecorded = await asyncio.to_thread(factory.store.unrecorded)
    if not unrecorded:
        return
    found: dict[str, str] = {}
    unsure: set[str] = set()
    unwatched: set[str] = set()  # of entries this factory no longer knows: lost
    by_entry: dict[str, list[Glidein]] = {}
    for g in sorted(unrecorded, key=submission_order):
        by_entry.setdefault(g.entry, []).append(g)
    for name, group in by_entry.items():
        entry, backend = factory.watched_entry(name), factory.backends.get(group[0].backend)
        if entry is None or backend is None:
            unwatched.update(g.glidein_id for g in group)
            continue
        try:
            found.update(await backend.adopt(entry, [g.glidein_id for g in group]))
        except Exception as exc:  # cannot tell: keep counting them, ask next cycle
            log.warning("entry %s: cannot look for interrupted submissions: %s", name, exc)
            unsure.update(g.glidein_id for g in group)
    if found:
        await asyncio.to_thread(factory.store.set_backend_ids, found)
        for name, group in by_entry.items():
            adopted = [g.glidein_id for g in group if g.glidein_id in found]
            if adopted:
                log.warning(
                    "entry %s: adopted %d pilot(s) a stop interrupted: %s",
                    name,
                    len(adopted),
                    ", ".join(adopted[:20]) + (" ..." if len(adopted) > 20 else ""),
                )
    lost = {
        g.glidein_id: GlideinState.failed
        for g in unrecorded
        if g.glidein_id not in found.keys() | unsure | unwatched
    }
    log.warning(
        "%d submission(s) were interrupted by a factory stop: %d found at the "
        "site, %d never reached it, %d of entries no longer configured (lost)",
        len(unrecorded),
        len(found),
        len(lost),
        len(unwatched),
    )
    if lost:
        await asyncio.to_thread(factory.store.set_states, lost, "submit_failed")
    if unwatched:  # cannot be asked about: neither submit_failed nor counted forever
        await asyncio.to_thread(
            factory.store.set_states, dict.fromkeys(unwatched, GlideinState.failed), "lost"
        )


def submission_order(g: Glidein) -> tuple[float, str, int]:
    """Glideins in the order they were handed to the backend: ids end in a counter."""
    stem, _, seq = g.glidein_id.rpartition("-")
    return (g.submitted_at, stem, int(seq) if seq.isdigit() else 0)


def by_backend(glideins: list[Glidein]) -> dict[str, list[Glidein]]:
    """Glideins grouped by the backend kind that tracks them."""
    out: dict[str, list[Glidein]] = {}
    for g in glideins:
        out.setdefault(g.backend, []).append(g)
    return out
