"""What the tests that run real services share: a deadline poll, and the whole
installation (pool, factory, frontend as processes on loopback) with the calls
the tests make to it.

Waits poll a condition with a deadline (the services are other processes, so
there is no in-process event to await); no test asserts on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from glidewms.client import ClientSettings, PoolClient
from glidewms.launcher import Installation, Options
from glidewms.submit import parse_submit

T = TypeVar("T")

# The short cycles and timeouts the system tests run the installation with.
SYSTEM_SETTINGS: dict[str, Any] = {
    "frontend_cycle": 0.5,
    "factory_cycle": 0.5,
    "pilot_idle_timeout": 3,
    "heartbeat": 1.0,
}


def wait_for(
    predicate: Callable[[], T], what: str, timeout: float = 120.0, interval: float = 0.1
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class System:
    """A started installation and the calls the tests make to it (admin token)."""

    def __init__(self, inst: Installation, http_timeout: float = 5.0) -> None:
        self.inst = inst
        self.http_timeout = http_timeout
        self.pool = PoolClient(ClientSettings(inst.services["pool"].url, inst.token_file("user")))
        admin = inst.token_file("admin").read_text().strip()
        self.admin = {"Authorization": f"Bearer {admin}"}

    def get(self, service: str, path: str, **params: Any) -> Any:
        r = httpx.get(
            f"{self.inst.services[service].url}/api/v1/{path}",
            headers=self.admin,
            params=params or None,
            timeout=self.http_timeout,
        )
        r.raise_for_status()
        return r.json()

    def factory(self, path: str) -> Any:
        return self.get("factory", path)

    def frontend_status(self) -> dict[str, Any]:
        return self.get("frontend", "status")

    def glideins(self) -> list[dict[str, Any]]:
        return self.get("factory", "glideins")

    def glidein(self, glidein_id: str) -> dict[str, Any]:
        return next(g for g in self.glideins() if g["glidein_id"] == glidein_id)

    def pilots(self) -> list[dict[str, Any]]:
        return self.get("pool", "pilots")

    def explain(self, entry: str | None = None, history: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"history": history}
        if entry:
            params["entry"] = entry
        try:
            return self.get("frontend", "explain", **params)
        except httpx.HTTPStatusError:
            return []

    def submit(self, text: str, base: Path) -> list[str]:
        return self.pool.submit(parse_submit(text, "test.sub", base))["job_ids"]

    def job(self, jid: str) -> dict[str, Any]:
        return self.pool.job(jid)

    def pilot_pid(self, glidein_id: str) -> int:
        with sqlite3.connect(self.inst.path("factory", "factory.db")) as conn:
            (backend_id,) = conn.execute(
                "SELECT backend_id FROM glideins WHERE glidein_id = ?", (glidein_id,)
            ).fetchone()
        return int(backend_id.split("/")[2])


def kill_leftover_pilots(inst: Installation) -> None:
    """SIGKILL the process group of every pilot the factory's local backend started."""
    db = inst.path("factory", "factory.db")
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT backend_id FROM glideins WHERE backend_id IS NOT NULL")
        for (backend_id,) in rows:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError, IndexError):
                os.killpg(int(backend_id.split("/")[2]), signal.SIGKILL)


@contextlib.contextmanager
def systems(
    tmp_path: Path, http_timeout: float = 5.0, **defaults: Any
) -> Iterator[Callable[..., System]]:
    """Start installations under `tmp_path / "state"` with SYSTEM_SETTINGS, then
    `defaults`, then the caller's settings; stop them all and kill their pilots."""
    started: list[Installation] = []

    def start(**kw: Any) -> System:
        settings = {**SYSTEM_SETTINGS, **defaults, **kw}
        inst = Installation(Options(state_dir=tmp_path / "state", **settings))
        inst.prepare()
        started.append(inst)
        inst.start()
        return System(inst, http_timeout)

    try:
        yield start
    finally:
        for inst in started:
            inst.stop()
            kill_leftover_pilots(inst)
