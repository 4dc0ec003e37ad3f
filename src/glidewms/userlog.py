"""A job's events in HTCondor's user log format (``log = file``).

condor_submit's ``log`` names a file where the schedd appends each event of
the job as it happens; tools (condor_wait, DAGMan, htcondor2's JobEventLog,
workflow systems) read it. The pool keeps the events (GET
/clusters/{id}/events); this module turns them into that text, and the CLI
appends them to the file the job's ``UserLog`` names (cli/userlog_cmds.py).

Each event is ``NNN (CCC.PPP.000) YYYY-MM-DD HH:MM:SS text`` (local time,
HTCondor's ISO date form), then lines indented by a tab, then ``...``.
What the pool records maps to:

| pool event | user log event |
|---|---|
| submitted | 000 Job submitted |
| started | 001 Job executing |
| completed | 005 Job terminated (return value, or signal for a negative code) |
| requeued after the job exited (max_retries...) | 004 evicted: terminated and requeued |
| evicted (pilot lost, claim expired) | 004 Job was evicted, not checkpointed |
| held | 012 Job was held (reason, code, subcode) |
| released | 013 Job was released |
| removed | 009 Job was aborted |

Other pool events (edits, the requeue that follows an eviction) have no
user log event and are left out. Text from outside (reasons) is written on
one line with control characters replaced, so no event can end another or
forge one. Pure: no I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SUBMIT, EXECUTE, EVICTED, ABORTED, TERMINATED, HELD, RELEASED = 0, 1, 4, 9, 5, 12, 13
MAX_REASON = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_ZERO_USAGE = "Usr 0 00:00:00, Sys 0 00:00:00"


def one_line(text: Any, default: str = "") -> str:
    """Outside text as one bounded line: nothing in it can end the event."""
    if not isinstance(text, str) or not text.strip():
        return default
    return _CONTROL.sub(" ", text).strip()[:MAX_REASON] or default


def stamp(when: float, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", localtime(when))


def header(code: int, cluster_id: int, proc_id: int, when: float, text: str, **kw: Any) -> str:
    return f"{code:03d} ({cluster_id:03d}.{proc_id:03d}.000) {stamp(when, **kw)} {text}\n"


def _termination(exit_code: int) -> list[str]:
    if exit_code < 0:  # a signal, when a pilot reports one as its negative
        return [f"\t(0) Abnormal termination (signal {-exit_code})", "\t(0) No core file"]
    return [f"\t(1) Normal termination (return value {exit_code})"]


def _usage(total: bool) -> list[str]:
    kinds = ["Run Remote", "Run Local"] + (["Total Remote", "Total Local"] if total else [])
    return [f"\t\t{_ZERO_USAGE}  -  {k} Usage" for k in kinds]


def _bytes(total: bool) -> list[str]:
    kinds = ["Run Bytes Sent", "Run Bytes Received"]
    if total:
        kinds += ["Total Bytes Sent", "Total Bytes Received"]
    return [f"\t0  -  {k} By Job" for k in kinds]


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def render(
    cluster_id: int,
    proc_id: int,
    event: Mapping[str, Any],
    submit_host: str = "<127.0.0.1:0>",
    localtime: Callable[[float], time.struct_time] = time.localtime,
) -> str | None:
    """One pool event (its ``time``, ``type`` and ``detail``) as user log
    text, or None when HTCondor has no such event."""
    kind, when = event.get("type"), float(event.get("time") or 0)
    detail = event.get("detail") or {}
    if not isinstance(detail, Mapping):
        detail = {}

    def head(code: int, text: str) -> str:
        return header(code, cluster_id, proc_id, when, text, localtime=localtime)

    body: list[str] = []
    if kind == "submitted":
        top = head(SUBMIT, f"Job submitted from host: {submit_host}")
    elif kind == "started":
        pilot = one_line(detail.get("pilot"), "pilot").replace(" ", "_").replace(">", "_")
        top = head(EXECUTE, f"Job executing on host: <0.0.0.0:0?alias={pilot}>")
        body.append(f"\tSlotName: slot1@{pilot}")
    elif kind == "completed":
        top = head(TERMINATED, "Job terminated.")
        body += _termination(_int(detail.get("exit_code")))
        body += _usage(True) + _bytes(True)
    elif kind == "requeued" and "exit_code" in detail:  # the job exited; its policy requeued it
        top = head(EVICTED, "Job was evicted.")
        body.append("\t(0) Job terminated and was requeued")
        body += _usage(False) + _bytes(False)
        body += _termination(_int(detail.get("exit_code")))
        reason = one_line(detail.get("reason"))
        if reason:
            body.append(f"\t{reason}")
    elif kind == "evicted":
        top = head(EVICTED, "Job was evicted.")
        body.append("\t(0) Job was not checkpointed.")
        body += _usage(False) + _bytes(False)
    elif kind == "held":
        top = head(HELD, "Job was held.")
        body.append("\t" + one_line(detail.get("reason"), f"held by {one_line(detail.get('by'))}"))
        body.append(f"\tCode {_int(detail.get('code'))} Subcode {_int(detail.get('subcode'))}")
    elif kind == "released":
        top = head(RELEASED, "Job was released.")
        body.append(
            "\t" + one_line(detail.get("reason"), f"via glidewms release (by {_by(detail)})")
        )
    elif kind == "removed":
        top = head(ABORTED, "Job was aborted.")
        body.append("\t" + one_line(detail.get("reason"), f"via glidewms rm (by {_by(detail)})"))
    else:
        return None
    return top + "".join(line + "\n" for line in body) + "...\n"


def _by(detail: Mapping[str, Any]) -> str:
    return one_line(detail.get("by"), "user")


def render_all(
    cluster_id: int,
    events: Iterable[Mapping[str, Any]],
    submit_host: str = "<127.0.0.1:0>",
    localtime: Callable[[float], time.struct_time] = time.localtime,
) -> list[tuple[int, int, str]]:
    """(event id, proc id, text) of the events of one cluster that the user
    log has, in the order given (the pool's: by id)."""
    out = []
    for e in events:
        text = render(cluster_id, int(e["proc_id"]), e, submit_host, localtime)
        if text is not None:
            out.append((int(e["id"]), int(e["proc_id"]), text))
    return out


def submit_host(pool_url: str) -> str:
    """The pool's address as the host a job was submitted from: ``<host:port>``."""
    from urllib.parse import urlsplit

    parts = urlsplit(pool_url)
    host = one_line(parts.hostname, "localhost").replace(">", "_")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"<{host}:{port}>"
