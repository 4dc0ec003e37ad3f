"""Job ads for listings (q, history, constraints) without a parse per job.

A job's stored ad never changes while it is listed; what changes (state,
starts, exit code, hold reason...) lives in columns. A listing therefore
writes the full ad as text by appending those columns to the stored text,
and a constraint is evaluated on one parsed ad per distinct stored text (the
jobs of a cluster differ only in ProcId), with ProcId and the columns set on
it for each job. `jobs.full_ad` stays the reference: both must agree
(tests/unit/test_pool_listing.py checks it).
"""

from __future__ import annotations

import re
from typing import Any

from glidewms import classads
from glidewms.pool.jobs import dynamic, full_ad

# Attributes a listing adds from the columns, in the order they are written.
DYNAMIC = (
    "JobStatus",
    "NumJobStarts",
    "NumRestarts",
    "NumSiteFailures",
    "EnteredCurrentStatus",
    "ExitCode",
    "RemotePilot",
    "HoldReason",
    "HoldReasonCode",
    "JobStartDate",
    "CompletionDate",
    "NumJobCompletions",
)
_DYNAMIC_LOWER = tuple(name.lower() for name in DYNAMIC)
_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f]*$')
_PROC = re.compile(r"(?:^\[ |; )ProcId = (-?\d+)(?:;| \])")


def literal(value: Any) -> str:
    """A Python int or str as ClassAd source text."""
    if isinstance(value, str):
        if _PLAIN.match(value):
            return f'"{value}"'
        ad = classads.ClassAd()
        ad["V"] = value
        return str(ad.lookup("V"))
    return str(int(value))


def _mentions_any(text: str) -> bool:
    low = text.lower()
    return any(f"[ {n} = " in low or f"; {n} = " in low for n in _DYNAMIC_LOWER)


def ad_text(row: Any) -> str:
    """The job's full ad as one-line text (stored ad plus its columns), unparsed."""
    text = row.ad.rstrip()
    extra = dynamic(row)
    if _mentions_any(text) or not text.endswith("]"):
        # an ad that carries one of these names itself: let the library merge them
        return classads.to_text(full_ad(row))
    body = text[:-1].rstrip()
    parts = "; ".join(f"{name} = {literal(value)}" for name, value in extra.items())
    return f"{body}; {parts} ]" if body != "[" else f"[ {parts} ]"


class AdCache:
    """Parsed ads per distinct stored text, ProcId aside, reused across jobs.

    `full_ad` returns a shared ad changed in place: use it before the next call.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._ads: dict[str, Any] = {}

    def full_ad(self, row: Any) -> Any:
        if _mentions_any(row.ad):
            return full_ad(row)  # the stored ad sets one of them: keep jobs.full_ad's merge
        found = _PROC.search(row.ad)
        key = row.ad if found is None else row.ad[: found.start(1)] + row.ad[found.end(1) :]
        ad = self._ads.get(key)
        if ad is None:
            if len(self._ads) >= self.limit:
                self._ads.clear()
            ad = self._ads[key] = classads.parse_ad(row.ad)
        elif found is not None:
            ad["ProcId"] = int(found.group(1))
        values = dynamic(row)
        for name in DYNAMIC:
            if name in values:
                ad[name] = values[name]
            elif name in ad:
                del ad[name]
        return ad
