"""The frontend's memory across cycles, kept in a small JSON file in state_dir.

What must survive a restart is little: per group and entry, how many cycles
have passed without demand and the last request sent; and the number of
cycles run, so explanations keep counting where they stopped. Losing it would restart
removal escalation from zero (safe, only slower) but also forget the last
max_running a confirmation holds, so it is written atomically after every
cycle (write to a temporary file, fsync, rename) and a corrupt or missing file
means "start afresh", never a crash. Tokens are not written here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from glidewms.frontend.policy import Memory

log = logging.getLogger(__name__)


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.cycles = 0  # as read by the last load()

    def load(self) -> dict[str, dict[str, Memory]]:
        self.cycles = 0
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: unreadable (%s); starting with no memory of past cycles", self.path, exc
            )
            return {}
        cycles = data.get("cycles") if isinstance(data, dict) else None
        if isinstance(cycles, int) and not isinstance(cycles, bool) and cycles >= 0:
            self.cycles = cycles
        groups = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(groups, dict):
            return {}
        return {
            g: {e: Memory.from_json(m) for e, m in entries.items()}
            for g, entries in groups.items()
            if isinstance(entries, dict)
        }

    def save(self, memory: dict[str, dict[str, Memory]], cycles: int = 0) -> None:
        data: dict[str, Any] = {
            "version": 1,
            "cycles": cycles,
            "groups": {
                g: {e: m.to_json() for e, m in entries.items()} for g, entries in memory.items()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
