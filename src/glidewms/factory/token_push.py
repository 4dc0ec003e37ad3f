"""Renewed pilot tokens reach pilots that are already running.

GlideinWMS operators know pilots that died because their token was only ever
handed over at submission. Here a frontend renews its tokens by PUTting its
request; the factory replaces the 0600 files under `credentials/`. Pilots on
the factory's host read those files directly (the agent reads the token file
at every call), so nothing more is needed there. Pilots that run as another
account (`batch.command_prefix`) or on a remote login node (`ssh`) read a copy
the backend wrote: `TokenPush` rewrites that copy whenever the factory's file
changed since the last push, for every entry that has pilots alive, once per
cycle. A push that fails is retried next cycle; the token is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import Backend
from glidewms.factory.store import Glidein

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]  # inode, size, mtime_ns: the file was replaced if it changed


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TokenPush:
    """What was pushed where: {(entry, token file): stamp of the file pushed}."""

    def __init__(self) -> None:
        self.pushed: dict[tuple[str, Path], Stamp] = {}

    async def push(
        self,
        active: Iterable[Glidein],
        entries: Callable[[str], EntryConfig | None],
        backends: Mapping[str, Backend],
        files: Callable[[str, str, str], list[Path]],
    ) -> int:
        """Push changed token files to the entries whose pilots read copies.

        `files(frontend, group, entry)` names the token files pilots of that
        request may have been given. Returns how many copies were written.
        """
        wanted: set[tuple[str, str, str]] = set()
        for g in active:
            wanted.add((g.entry, g.frontend, g.group))
        live: set[tuple[str, Path]] = set()
        written = 0
        for name, frontend, group in sorted(wanted):
            entry = entries(name)
            backend = backends.get(entry.backend) if entry is not None else None
            if entry is None or backend is None or not backend.stages_token(entry):
                continue
            for path in files(frontend, group, name):
                key = (name, path)
                live.add(key)
                stamp = _stamp(path)
                if stamp is None or self.pushed.get(key) == stamp:
                    continue
                try:
                    await backend.refresh_token(entry, path)
                except Exception as exc:  # retried next cycle
                    log.warning(
                        "entry %s: cannot refresh the pilot token copy of %s/%s: %s",
                        name,
                        frontend,
                        group,
                        exc,
                    )
                    continue
                self.pushed[key] = stamp
                written += 1
                log.info("entry %s: pilot token copy of %s/%s refreshed", name, frontend, group)
        for key in set(self.pushed) - live:  # no pilots there any more
            del self.pushed[key]
        return written
