"""What the pages show, as pure functions of what the services answered:
summaries, the reasons a job is idle, the plots' series. Kept apart from
the routes so they are tested with tables, not browsers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from markupsafe import Markup

from glidewms.web.sessions import MAX_TOKEN_BYTES
from glidewms.web.svg import Series, line_chart

LIVE = ("idle", "running", "held")
MAX_LOG_CHARS = 1024 * 1024  # of a pilot's stdout or stderr on its page: the end
MAX_TRAIL_RECORDS = 5000  # the latest of its trail


def when(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return ""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def ago(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return ""
    return duration(time.time() - value) + " ago"


def bounded(value: str | None, most: int) -> str | None:
    """A filter from the query string: None when empty, cut at `most`."""
    if not value:
        return None
    return value.strip()[:most] or None


def number(value: str | None, default: int, low: int, high: int) -> int:
    try:
        found = int(value) if value else default
    except ValueError:
        return default
    return min(max(found, low), high)


def read_token_file(path: str, allowed: Iterable[Path]) -> str:
    """An operator's token from a file on the console's machine, only inside
    one of `allowed` (web.yaml `token_dirs`): the form must not become a way
    to read any file the console can. The error never shows the content."""
    if len(path) > 4096 or "\0" in path:
        raise ValueError("That is not a file path.")
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ValueError("No such token file.") from None
    roots = [Path(d).resolve() for d in allowed]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValueError("Token files are read only from the console's token_dirs.")
    try:
        if not resolved.is_file() or resolved.stat().st_size > MAX_TOKEN_BYTES:
            raise ValueError("Not a token file.")
        return resolved.read_text(errors="replace").strip()
    except OSError:
        raise ValueError("The token file cannot be read.") from None


# ---------------------------------------------------------------- pool


def queue_summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per owner and state and per cluster and state (like condor_q's
    batch view), and the totals."""
    owners: dict[str, dict[str, int]] = {}
    clusters: dict[str, dict[str, Any]] = {}
    totals: dict[str, int] = {}
    for job in jobs:
        state = str(job.get("state", ""))
        owner = str(job.get("owner", ""))
        cluster = str(job.get("job_id", "")).split(".")[0]
        totals[state] = totals.get(state, 0) + 1
        row = owners.setdefault(owner, {})
        row[state] = row.get(state, 0) + 1
        c = clusters.setdefault(
            cluster, {"owner": owner, "cmd": job.get("cmd") or "", "q_date": job.get("q_date")}
        )
        c[state] = c.get(state, 0) + 1
    states = sorted(totals, key=lambda s: (s not in LIVE, LIVE.index(s) if s in LIVE else 0, s))
    return {
        "states": states,
        "totals": totals,
        "owners": sorted(owners.items()),
        "clusters": sorted(clusters.items(), key=lambda kv: -int(kv[0] or 0))[:200],
    }


def why_idle(
    job: dict[str, Any],
    explain: list[dict[str, Any]] | None,
    userprio: list[dict[str, Any]] | None = None,
) -> list[str]:
    """What can be said today about why a job does not run: its state, hold
    reason, restarts, its Requirements, where its submitter stands in fair
    share; with an operator's view of the frontend, which entries count it
    as demand."""
    state = job.get("state")
    if state == "held":
        return [f"Held: {job.get('hold_reason') or 'no reason given'}"]
    if state != "idle":
        return []
    reasons = ["Idle: waiting for a pilot whose slot matches the job's Requirements."]
    if job.get("num_starts"):
        reasons.append(
            f"It started {job['num_starts']} time(s) before and went back to the queue "
            f"({job.get('num_restarts') or 0} restart(s))."
        )
    requirements = requirements_of(job.get("ad_long") or "")
    if requirements:
        reasons.append(f"Requirements = {requirements}")
    if userprio:
        reasons.extend(fair_share_line(str(job.get("owner", "")), userprio))
    if explain is not None:
        wanting = [
            r
            for r in explain
            if isinstance(r.get("demand"), dict) and (r["demand"].get("idle_jobs") or 0) > 0
        ]
        if not wanting:
            reasons.append(
                "The frontend's last cycle counted no idle job as demand for any entry: "
                "no entry's attributes match this job's Requirements (or the cycle is older "
                "than the job)."
            )
        for r in wanting:
            request = r.get("request") or {}
            reasons.append(
                f"Entry {r.get('entry')} (group {r.get('group')}): "
                f"{r['demand'].get('idle_jobs')} idle job(s) match; "
                f"{request.get('idle', 0)} idle pilot(s) requested"
                + (f"; {'; '.join(map(str, r.get('reasons') or []))}" if r.get("reasons") else "")
            )
    return reasons


def fair_share_line(owner: str, submitters: list[dict[str, Any]]) -> list[str]:
    """Where the owner's submitter stands: jobs of a lower effective priority
    are matched first (docs/pool.md, fair share)."""
    ranked = sorted(submitters, key=lambda s: float(s.get("effective_priority") or 0))
    for place, s in enumerate(ranked, start=1):
        name = str(s.get("submitter", ""))
        if name == owner or name.endswith(f".{owner}"):
            return [
                f"Fair share: submitter {name} has effective priority "
                f"{float(s.get('effective_priority') or 0):.3g} ({place} of {len(ranked)}; "
                f"lower goes first), {s.get('running_cores', 0)} core(s) running."
            ]
    return []


def requirements_of(ad_long: str) -> str | None:
    for line in ad_long.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "requirements":
            return value.strip()[:1000]
    return None


# ---------------------------------------------------------------- factory and frontend


def factory_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stats rows with their goodput fraction (None without reports)."""
    out = []
    for row in rows:
        good = float(row.get("goodput_seconds") or 0)
        bad = float(row.get("badput_seconds") or 0)
        out.append({**row, "goodput_fraction": good / (good + bad) if good + bad > 0 else None})
    return sorted(out, key=lambda r: (str(r.get("entry")), str(r.get("frontend"))))


def cycles(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept explanation records, newest cycle first."""
    return sorted(history, key=lambda r: (-(r.get("cycle") or 0), str(r.get("entry"))))


# ---------------------------------------------------------------- plots


def label_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{v}" for _, v in sorted(labels.items())) or "total"


def group_entry(labels: dict[str, str]) -> str:
    return f"{labels.get('entry', '')} ({labels.get('group', '')})"


def chart(
    title: str,
    found: dict[str, Any],
    since: float,
    label: Callable[[dict[str, str]], str],
    unit: str = "",
    combine: bool = False,
) -> Markup:
    """A chart of a timeseries answer; with `combine`, series whose labels
    give the same name are summed point by point (pilots per entry, over
    their states)."""
    merged: dict[str, dict[float, float]] = {}
    for s in found.get("series", []):
        name = label(s.get("labels") or {})
        points = merged.setdefault(name, {})
        for t, v in s.get("points", []):
            points[t] = points.get(t, 0.0) + v if combine else v
    return line_chart(
        title,
        [Series(name, sorted(points.items())) for name, points in merged.items()],
        since=since,
        unit=unit,
    )


def no_plot(title: str, why: str) -> Markup:
    return line_chart(f"{title} (unavailable: {why[:80]})", [], since=time.time() - 3600)
