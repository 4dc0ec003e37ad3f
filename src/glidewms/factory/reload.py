"""Reconfigure a running factory (admin `POST /api/v1/reload`, or SIGHUP).

Only the entries change without a restart: a catalogue applied, an entry
added, resized or removed. Nothing about a pilot is lost on the way:

- pilots of a removed entry keep being watched (status, held/stale handling,
  logs) until they end, because the backends keep the entry's last
  configuration (`BackendContext.entries` is only ever added to) and the loop
  looks removed entries up in `Factory.retired`, which is stored: a factory
  restarted without the entry watches them too, and adopts its interrupted
  submissions; but nothing new is submitted there: requests naming it get
  "unknown entry";
- a changed entry applies to the next submissions; pilots already submitted
  keep running as they were started;
- a new backend kind gets its backend at once.

A configuration that does not load leaves the running one untouched, and the
error (file, key, what was expected) goes back to whoever asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.config.loader import ConfigError
from glidewms.factory.backends import BackendContext, create_backend
from glidewms.factory.retired import retire, unretire
from glidewms.factory.service import Factory

log = logging.getLogger(__name__)

# Settings a reload cannot change (they need a restart).
FIXED = (
    "listen_host",
    "listen_port",
    "state_dir",
    "database_url",
    "issuer_public_key",
    "pilot_issuer_public_key",
)


@dataclass(kw_only=True)
class ReloadSummary:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    ignored: list[str] = field(default_factory=list)  # settings that need a restart

    def public(self) -> dict[str, Any]:
        return dict(self.__dict__)


def entry_changes(old: list[EntryConfig], new: list[EntryConfig]) -> ReloadSummary:
    """Which entries a reload adds, removes and changes (pure)."""
    before = {e.name: e for e in old}
    after = {e.name: e for e in new}
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    return ReloadSummary(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=changed,
        unchanged=len(set(before) & set(after)) - len(changed),
    )


def apply_reload(factory: Factory, context: BackendContext, new: FactoryConfig) -> ReloadSummary:
    """Swap in `new`'s entries (and cycle time) without losing a pilot (module docstring)."""
    old = factory.config
    summary = entry_changes(old.entries, new.entries)
    summary.ignored = [
        k
        for k in FIXED
        if getattr(new, k) != getattr(old, k)
        and not (k == "state_dir" and new.state_dir.resolve() == old.state_dir)
    ]
    for kind in sorted({e.backend for e in new.entries} - set(factory.backends)):
        factory.backends[kind] = create_backend(kind, context)
    retire(factory, [e for e in (old.entry(n) for n in summary.removed) if e is not None])
    unretire(factory, [e.name for e in new.entries])
    context.entries.update({e.name: e for e in new.entries})
    factory.config = old.model_copy(
        update={"entries": list(new.entries), "cycle_seconds": new.cycle_seconds}
    )
    log.warning(
        "reconfigured: %d entries added (%s), %d removed (%s), %d changed, %d unchanged%s",
        len(summary.added),
        ", ".join(summary.added) or "-",
        len(summary.removed),
        ", ".join(summary.removed) or "-",
        len(summary.changed),
        summary.unchanged,
        f"; ignored until a restart: {', '.join(summary.ignored)}" if summary.ignored else "",
    )
    factory.wake()
    return summary


class Reloader:
    """How a running factory is reconfigured: `load` the configuration again (its
    file), then `apply` it between two awaits of the converge loop, so a cycle sees
    the old entries or the new ones, never a mix.

    Without a `loader` (a factory started without a configuration file) there
    is nothing to reload and `load` says so.
    """

    def __init__(
        self, factory: Factory, context: BackendContext, loader: Callable[[], FactoryConfig] | None
    ) -> None:
        self.factory = factory
        self.context = context
        self.loader = loader

    def load(self) -> FactoryConfig:
        """The configuration read again; ConfigError names what is wrong in it."""
        if self.loader is None:
            raise ConfigError(
                "this factory was started without a configuration file: nothing to reload"
            )
        return self.loader()

    def apply(self, new: FactoryConfig) -> ReloadSummary:
        """Swap in the entries of `new` (in the loop's thread)."""
        resolved = new.model_copy(update={"state_dir": new.state_dir.resolve()})
        return apply_reload(self.factory, self.context, resolved)

    def on_sighup(self) -> None:
        """SIGHUP: reload, or log why not; the running configuration stays on error."""
        try:
            self.apply(self.load())
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)
