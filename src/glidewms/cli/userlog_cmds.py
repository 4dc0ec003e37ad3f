"""Users' job event logs (``log = file``): written by the CLI, from the pool.

The pool keeps each job's events; HTCondor's schedd would append them to the
file the job's ``UserLog`` names as they happen. Here the user's own
commands do it: ``glidewms submit`` writes the Submit events, and ``q``,
``history``, ``wait`` and ``log`` append whatever happened since, in
HTCondor's format (glidewms.userlog), so condor_wait-style tools, DAGMan-like
workflow systems and htcondor2's JobEventLog read the file as they would
HTCondor's.

What has been written is remembered per (pool, cluster, log file) as the id
of the last event written (event ids only grow), in
``$XDG_STATE_HOME/glidewms/userlogs.json`` (``GLIDEWMS_USERLOG_STATE``
names another directory); re-running never writes an event twice, and a
lock file beside it serialises concurrent runs. A cluster is forgotten once
none of its jobs is queued and its last events are written.

Only files named at submit from the user's own submit description are ever
written: the pool says which job's events go to which of those files, never
to a file of its choosing (a compromised pool cannot make the CLI append to
``~/.bashrc``). A log file deleted since is written again from its first
event still in the pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glidewms import userlog
from glidewms.cli.user import PoolOption, TokenOption, client, err, fail, out
from glidewms.client import ClientError, PoolClient

MAX_PAGES = 1000  # per cluster and run: 5M events


def state_dir() -> Path:
    given = os.environ.get("GLIDEWMS_USERLOG_STATE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "glidewms"


@contextlib.contextmanager
def _locked_state() -> Iterator[dict[str, Any]]:
    """The registry, loaded under an exclusive lock and saved (atomically) on exit."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "userlogs.json"
    with open(folder / "userlogs.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            state = {}
        if not isinstance(state.get("clusters"), dict):
            state = {"version": 1, "clusters": {}}
        try:
            yield state
        finally:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            tmp.replace(path)


def _key(pool_url: str, cluster_id: int) -> str:
    return f"{pool_url} {cluster_id}"


def register(pool_url: str, cluster_id: int, paths: set[str]) -> None:
    """Remember that the jobs of this cluster log to these files (from the
    user's submit description; nothing written yet)."""
    if not paths:
        return
    with _locked_state() as state:
        entry = state["clusters"].setdefault(_key(pool_url, cluster_id), {"logs": {}})
        for p in paths:
            entry["logs"].setdefault(p, 0)


def user_logs_of(description: Any, cluster_id: int) -> set[str]:
    """The absolute UserLog paths of a submit description's jobs."""
    from glidewms import classads

    paths = set()
    for job in description.jobs:
        text = job.with_cluster(cluster_id).attrs.get("UserLog")
        if text:
            value = classads.evaluate(classads.parse_expr(text), classads.ClassAd())
            if isinstance(value, str) and value.startswith("/"):
                paths.add(value)
    return paths


def _append(path: str, texts: list[str]) -> None:
    """Append whole events, then make them durable before the marker moves on."""
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # against any other writer of this file
        f.write("".join(texts))
        f.flush()
        os.fsync(f.fileno())


def sync(c: PoolClient, clusters: list[int] | None = None) -> dict[str, int]:
    """Append to each registered log the events of its clusters not yet
    written (all of this pool's registered clusters, or those named).
    Returns {path: events written}."""
    written: dict[str, int] = {}
    if not (state_dir() / "userlogs.json").is_file():
        return written  # no log was ever asked for: nothing to read, nothing created
    host = userlog.submit_host(c.url)
    with _locked_state() as state:
        entries = state["clusters"]
        for key in sorted(entries):
            url, _, cid = key.rpartition(" ")
            if url != c.url or (clusters is not None and int(cid) not in clusters):
                continue
            try:
                finished = _sync_cluster(c, int(cid), entries[key], host, written)
            except ClientError as exc:
                if ": 404:" not in str(exc) and ": 403:" not in str(exc):
                    raise
                finished = True  # the pool has no such cluster of ours (any more)
            if finished:
                del entries[key]
    return written


def _sync_cluster(
    c: PoolClient, cluster_id: int, entry: dict[str, Any], host: str, written: dict[str, int]
) -> bool:
    """One cluster's new events into its logs; True once nothing more can come."""
    logs: dict[str, int] = entry["logs"]
    for path in logs:
        if logs[path] and not os.path.exists(path):
            logs[path] = 0  # deleted since: written again from the start
    after = min(logs.values(), default=0)
    for _ in range(MAX_PAGES):
        page = c.cluster_events(cluster_id, after)
        by_path: dict[str, list[str]] = {}
        procs = page.get("user_logs") or {}
        for event_id, proc_id, text in userlog.render_all(cluster_id, page["events"], host):
            target = procs.get(str(proc_id))
            if isinstance(target, str) and target in logs and event_id > logs[target]:
                by_path.setdefault(target, []).append(text)
        last = page["events"][-1]["id"] if page["events"] else after
        for path, texts in by_path.items():
            _append(path, texts)  # if one file fails, those written before stay marked
            written[path] = written.get(path, 0) + len(texts)
            logs[path] = max(logs[path], last)
        after = last
        for path in logs:
            logs[path] = max(logs[path], last)
        if not page.get("more"):
            return bool(page.get("done"))
    return False


def sync_quietly(c: PoolClient, clusters: list[int] | None = None) -> None:
    """`sync` for commands whose job is something else: a log that cannot be
    written is a warning, never their failure."""
    try:
        sync(c, clusters)
    except (ClientError, OSError, ValueError, KeyError) as exc:
        err.print(f"warning: job event logs not updated: {exc}", markup=False)


def registered(pool_url: str) -> list[int]:
    if not (state_dir() / "userlogs.json").is_file():
        return []
    with _locked_state() as state:
        return sorted(
            int(k.rpartition(" ")[2]) for k in state["clusters"] if k.rpartition(" ")[0] == pool_url
        )


ClusterArgs = Annotated[Optional[list[int]], typer.Argument(help="cluster ids")]  # noqa: UP045


def log(
    clusters: ClusterArgs = None,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Bring job event logs (submit `log = file`) up to date, now."""
    try:
        with client(pool, token_file) as c:
            written = sync(c, clusters or None)
    except (ClientError, OSError) as exc:
        raise fail(str(exc)) from None
    for path, n in sorted(written.items()):
        out.print(f"{path}: {n} event(s) written", markup=False)
    if not written:
        out.print("job event logs are up to date")


def wait(
    clusters: ClusterArgs = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="give up after this many seconds (0: never)")
    ] = 0.0,
    interval: Annotated[float, typer.Option("--interval", help="seconds between polls")] = 2.0,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Wait until no job of the clusters is queued (condor_wait), writing
    their event logs on the way; exit 1 on timeout. Without clusters: those
    whose logs this CLI writes."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        with client(pool, token_file) as c:
            todo = list(clusters or registered(c.url))
            if not todo:
                raise fail("nothing to wait for: name clusters")
            while todo:
                sync(c, todo)
                todo = [cid for cid in todo if not _done(c, cid)]
                if not todo:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    err.print(f"timed out; still queued: {' '.join(map(str, todo))}")
                    raise typer.Exit(1)
                time.sleep(max(0.05, interval))
    except (ClientError, OSError) as exc:
        raise fail(str(exc)) from None
    out.print("all jobs done")


def _done(c: PoolClient, cluster_id: int) -> bool:
    page = c.cluster_events(cluster_id, 2**62)  # no events: only whether any job is queued
    return bool(page.get("done"))


def register_commands(app: typer.Typer) -> None:
    app.command("log")(log)
    app.command("wait")(wait)
