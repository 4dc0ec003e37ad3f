"""The sandbox purge walks the store a bounded slice per pass, going on
where the last pass stopped, and deletes only unreferenced files."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from glidewms.db import make_engine, sqlite_url
from glidewms.pool import retention
from glidewms.pool.access import grant
from glidewms.pool.retention import DAY, Periods, Retention
from glidewms.pool.sandbox import SandboxStore
from glidewms.pool.store import PoolStore


def test_files_are_purged_a_slice_per_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.sqlite")))
    files = SandboxStore(tmp_path / "files")
    digests = []
    for i in range(7):
        data = f"file {i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        path = files.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        old = time.time() - 10 * DAY
        os.utime(path, (old, old))
        digests.append(digest)
    digests.sort()
    kept = digests[3]
    with store.shared.engine.begin() as conn:  # a cluster's input, and uploads
        grant(conn, [(kept, "alice", 5)] + [(d, "alice", 0) for d in digests])
    monkeypatch.setattr(retention, "MAX_FILES_EXAMINED", 3)
    keeper = Retention(store.shared, files, Periods(history=DAY, events=DAY, sandbox=7 * DAY))
    try:
        assert keeper.purge_files(time.time()) == 3  # the first three in digest order
        assert [files.has(d) for d in digests] == [False] * 3 + [True] * 4
        assert keeper.purge_files(time.time()) == 2  # the next three, one referenced
        assert keeper.purge_files(time.time()) == 1  # the last, then the walk wraps
        assert [d for d in digests if files.has(d)] == [kept]
        assert keeper.purge_files(time.time()) == 0
        assert files.has(kept)
        assert store.files.user_may_read("alice", kept)
        assert not store.files.user_may_read("alice", digests[0])
    finally:
        store.close()
