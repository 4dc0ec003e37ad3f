"""Full-text search across the archived pilot logs (GlideinMonitor's "which
pilots on site X logged 'CVMFS' yesterday").

A bounded scan, not an index: the database picks the candidate pilots first
(the caller's own, by entry or site and submission time, newest first, at
most `MAX_CANDIDATES`), then their files in the archive are read, each up to
`MAX_FILE_BYTES` and all together up to `MAX_SCAN_BYTES`, for a literal,
case-insensitive string (no regular expression: a hostile pattern cannot make
the scan slow). Why not SQLite FTS5: the logs are files the archive writes
and purges by age; an index would copy every byte into the database, need
its own upkeep on every append and purge, and exist only on SQLite (the
factory also runs on PostgreSQL). The questions asked are narrow in time and
place, so the candidates are few and the scan is cheap; when a search hits a
bound the answer says so (`truncated`) and a narrower one is the remedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glidewms.factory.archive import LogArchive
from glidewms.factory.store import FactoryStore, Glidein

FILES = ("stdout", "stderr", "trail.jsonl")
MAX_CANDIDATES = 2000
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_SCAN_BYTES = 256 * 1024 * 1024
MAX_LINES_PER_PILOT = 5
MAX_LINE_CHARS = 300


@dataclass(frozen=True)
class Query:
    text: str
    frontend: str | None  # None: every frontend's pilots (admin)
    entries: frozenset[str] | None  # None: every entry
    since: float | None
    until: float | None
    limit: int  # pilots in the answer


def search(store: FactoryStore, archive: LogArchive, query: Query) -> dict[str, Any]:
    """The pilots whose archived stdout, stderr or trail contains the text,
    newest first, with up to MAX_LINES_PER_PILOT matching lines each."""
    entry = next(iter(query.entries)) if query.entries and len(query.entries) == 1 else None
    candidates = [
        g
        for g in store.glideins(
            query.frontend, None, entry, None, MAX_CANDIDATES, since=query.since, until=query.until
        )
        if query.entries is None or g.entry in query.entries
    ]
    needle = query.text.casefold()
    found: list[dict[str, Any]] = []
    scanned = 0
    truncated = len(candidates) >= MAX_CANDIDATES
    for glidein in candidates:
        if len(found) >= query.limit:
            truncated = True
            break
        if scanned >= MAX_SCAN_BYTES:
            truncated = True
            break
        lines, read = _scan(archive, glidein, needle)
        scanned += read
        if lines:
            found.append({**_summary(glidein), "matches": lines})
    return {
        "text": query.text,
        "pilots": found,
        "candidates": len(candidates),
        "scanned_bytes": scanned,
        "truncated": truncated,
    }


def _summary(g: Glidein) -> dict[str, Any]:
    return {
        "glidein_id": g.glidein_id,
        "entry": g.entry,
        "frontend": g.frontend,
        "group": g.group,
        "state": g.state.value,
        "submitted_at": g.submitted_at,
        "exit_reason": g.exit_reason,
    }


def _scan(archive: LogArchive, g: Glidein, needle: str) -> tuple[list[dict[str, Any]], int]:
    try:
        directory = archive.directory(g.entry, g.frontend, g.glidein_id)
    except ValueError:
        return [], 0
    lines: list[dict[str, Any]] = []
    read = 0
    for name in FILES:
        data = _head(directory / name)
        read += len(data)
        text = data.decode("utf-8", errors="replace")
        if needle not in text.casefold():
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if needle in line.casefold():
                lines.append({"file": name, "line": number, "text": line[:MAX_LINE_CHARS]})
                if len(lines) >= MAX_LINES_PER_PILOT:
                    return lines, read
    return lines, read


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return b""
