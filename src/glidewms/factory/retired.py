"""Entries a reload removed while their pilots remain ("retired"), kept across restarts.

A reload moves a removed entry's configuration to `Factory.retired` and the
database (`retired_entries`); the loop keeps watching its pilots (status,
held and stale handling, logs) and submits nothing there. A factory
restarted without the entry reads it back before it adopts interrupted
submissions, so those of a retired entry are found at the site like any
other. Once its last pilot ended, the entry is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import create_backend
from glidewms.factory.store import Glidein

if TYPE_CHECKING:
    from glidewms.factory.service import Factory

log = logging.getLogger(__name__)


def retire(factory: Factory, entries: list[EntryConfig]) -> None:
    """Entries a reload removed: watched until their pilots end, even across a restart."""
    for entry in entries:
        factory.retired[entry.name] = entry
    factory.store.retire_entries({e.name: e.model_dump(mode="json") for e in entries})


def unretire(factory: Factory, names: list[str]) -> None:
    """Entries configured again: their own configuration applies."""
    back = [n for n in names if factory.retired.pop(n, None) is not None]
    factory.store.forget_retired(back)


async def load(factory: Factory) -> None:
    """After a restart: the stored retired entries that are not configured again, with
    a backend for each (added to the backends' context)."""
    stored = await asyncio.to_thread(factory.store.retired_entries)
    back = [name for name in stored if factory.config.entry(name) is not None]
    await asyncio.to_thread(factory.store.forget_retired, back)
    for name, values in stored.items():
        if name in back:
            continue
        try:
            entry = EntryConfig.model_validate(values)
        except ValueError as exc:
            log.error(
                "retired entry %s: stored configuration unusable (%s); its pilots "
                "stay counted as they were",
                name,
                exc,
            )
            continue
        factory.retired[name] = entry
        context = factory.context
        if context is not None:
            context.entries.setdefault(name, entry)
            if entry.backend not in factory.backends:
                factory.backends[entry.backend] = create_backend(entry.backend, context)
    if factory.retired:
        log.warning(
            "watching the pilots of retired entries: %s", ", ".join(sorted(factory.retired))
        )


async def drop_ended(factory: Factory, active: list[Glidein]) -> None:
    """A retired entry whose last pilot ended is forgotten."""
    alive = {g.entry for g in active}
    done = [name for name in factory.retired if name not in alive]
    for name in done:
        del factory.retired[name]
    if done:
        await asyncio.to_thread(factory.store.forget_retired, done)
        log.info("retired entries with no pilot left, forgotten: %s", ", ".join(done))
