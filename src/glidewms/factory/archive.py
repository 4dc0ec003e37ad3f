"""The pilot log archive: every pilot's stdout, stderr and JSON trail, kept a while.

Layout: `<root>/<entry>/<frontend>/<glidein_id>/` with `stdout`, `stderr`
(fetched from the backend once the pilot has ended) and `trail.jsonl` (the
records the pilot posts while it runs, one JSON object per line). Files are
written by the factory only; names are checked before they become paths.
Retention is by age: a pilot's directory goes once its newest file is older
than the retention period. The search (by entry, time, exit reason) is a
database query; the archive answers for one pilot at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _safe(kind: str, value: str) -> str:
    if not SAFE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{kind} {value!r} cannot name an archive directory")
    return value


class LogArchive:
    def __init__(self, root: Path, retention_seconds: float) -> None:
        self.root = Path(root)
        self.retention_seconds = retention_seconds

    def directory(self, entry: str, frontend: str, glidein_id: str) -> Path:
        return (
            self.root
            / _safe("entry", entry)
            / _safe("frontend", frontend)
            / _safe("glidein id", glidein_id)
        )

    def _ensure(self, entry: str, frontend: str, glidein_id: str) -> Path:
        path = self.directory(entry, frontend, glidein_id)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def store_output(
        self, entry: str, frontend: str, glidein_id: str, stdout: str, stderr: str
    ) -> None:
        """Keep what the backend kept of the pilot's standard output and error."""
        path = self._ensure(entry, frontend, glidein_id)
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            tmp = path / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(path / name)

    def append_trail(
        self,
        entry: str,
        frontend: str,
        glidein_id: str,
        records: Iterable[Mapping[str, Any]],
        final: bool,
    ) -> int:
        """Append the pilot's log records; a final flush is marked in the trail."""
        path = self._ensure(entry, frontend, glidein_id)
        lines = [json.dumps(dict(r), sort_keys=True) for r in records]
        if final:
            lines.append(json.dumps({"final": True, "received": time.time()}))
        with open(path / "trail.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in lines))
        return len(lines)

    def read(self, entry: str, frontend: str, glidein_id: str) -> dict[str, Any]:
        """{"stdout", "stderr", "trail": [records], "archived": bool}."""
        path = self.directory(entry, frontend, glidein_id)

        def text(name: str) -> str:
            try:
                return (path / name).read_text(errors="replace")
            except FileNotFoundError:
                return ""

        trail = [json.loads(line) for line in text("trail.jsonl").splitlines() if line.strip()]
        archived = (path / "stdout").exists()
        return {
            "stdout": text("stdout"),
            "stderr": text("stderr"),
            "trail": trail,
            "archived": archived,
        }

    def purge(self, now: float | None = None) -> int:
        """Remove pilots' directories not touched within the retention; how many went."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for pilot_dir in self.root.glob("*/*/*"):
            if not pilot_dir.is_dir():
                continue
            newest = max(
                (f.stat().st_mtime for f in pilot_dir.iterdir()), default=pilot_dir.stat().st_mtime
            )
            if now - newest > self.retention_seconds:
                shutil.rmtree(pilot_dir, ignore_errors=True)
                removed += 1
                for parent in (pilot_dir.parent, pilot_dir.parent.parent):
                    try:
                        os.rmdir(parent)  # only when empty
                    except OSError:
                        break
        return removed
