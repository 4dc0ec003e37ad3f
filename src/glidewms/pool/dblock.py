"""One pool per database.

A pool keeps its idle queue and fair-share accounting in memory, so two pools
writing one database would hand out the same job twice. The first pool holds
a lock for its whole life and a second one refuses to start, saying who holds
it:

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) on a
  connection kept open for the purpose (committed at once, so it never sits
  idle in a transaction). The server drops it when that session ends, even
  when the pool is killed.
- SQLite: `flock` on a file next to the database (`pool.sqlite.lock`), which
  the kernel releases when the process dies. flock (not lockf) so that two
  stores in one process exclude each other too.

A restarted pool may find its predecessor's lock for an instant (a killed
process's PostgreSQL session ends a little later), so acquiring retries for
`wait` seconds before it refuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# pg advisory lock key: "glidewms pool" in the database's lock space
PG_KEY = 0x676C6964_65706F6C
RETRY_SECONDS = 0.2


class DatabaseInUse(RuntimeError):
    """Another pool holds this database."""


class DatabaseLock:
    def __init__(self, engine: Engine, wait: float = 10.0) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self._file: IO[str] | None = None
        self._conn: Any = None
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            holder = self._try()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                raise DatabaseInUse(
                    f"database {self.url} is in use by another pool ({holder}); run one "
                    "pool per database: stop the other one, or give this one its own "
                    "database_url / state_dir"
                )
            time.sleep(RETRY_SECONDS)

    def _try(self) -> str | None:
        """None once held, else a description of the holder."""
        name = self.engine.dialect.name
        if name == "sqlite":
            return self._try_file()
        if name == "postgresql":
            return self._try_postgres()
        return None  # no portable lock: the operator's responsibility

    def _try_file(self) -> str | None:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return None
        path = Path(f"{database}.lock")
        handle = open(path, "a+")  # noqa: SIM115  (held open for the pool's life)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown process"
            handle.close()
            return f"{path} is locked by {owner}"
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return None

    def _try_postgres(self) -> str | None:
        conn = self.engine.connect()
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_KEY}).scalar()
            holder = None
            if not got:
                row = conn.execute(
                    sa.text(
                        "SELECT a.pid, a.client_addr, a.application_name FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                        "AND l.database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database()) "
                        "AND (l.classid::bigint << 32 | l.objid::bigint) = :k LIMIT 1"
                    ),
                    {"k": PG_KEY},
                ).first()
                holder = (
                    "advisory lock held by the session of server pid "
                    f"{row.pid} from {row.client_addr or 'a local socket'}"
                    if row
                    else "advisory lock held by another session"
                )
            conn.commit()  # never idle in a transaction while holding the lock
        except Exception:
            conn.close()
            raise
        if holder is not None:
            conn.close()
            return holder
        self._conn = conn
        return None

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_KEY})
                self._conn.commit()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
