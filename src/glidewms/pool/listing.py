"""Job ads for listings (q, history, constraints) without a parse per job.

A job's stored ad never changes while it is listed; what changes (state,
starts, exit code, hold reason...) lives in columns. A listing therefore
writes the full ad as text by appending those columns to the stored text,
and a constraint is evaluated on one parsed ad per distinct stored text (the
jobs of a cluster differ only in ProcId), with ProcId and the columns set on
it for each job. `jobs.full_ad` stays the reference: both must agree
(tests/unit/test_pool_listing.py checks it).

Other users see a job's ad without its `PRIVATE` attributes (HTCondor shows
ads, never sandboxes: arguments, environment, input and output files), and
a constraint is evaluated on what they would see (`Matcher`), so it cannot
probe what the answer hides.
"""

from __future__ import annotations

import re
from typing import Any

from glidewms import classads
from glidewms.pool.jobs import dynamic, full_ad, stored_ad

# What only a job's owner and admins see of it (docs/security.md).
PRIVATE = (
    "Arguments",
    "Args",
    "Environment",
    "Env",
    "TransferInput",
    "TransferOutput",
    "TransferOutputRemaps",
)
_PRIVATE_LOWER = tuple(name.lower() for name in PRIVATE)

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


def _mentions_any(text: str, names: tuple[str, ...] = _DYNAMIC_LOWER) -> bool:
    low = text.lower()
    return any(f"[ {n} = " in low or f"; {n} = " in low for n in names)


def ad_text(row: Any, stored: str | None = None) -> str:
    """The job's full ad as one-line text (stored ad, or `stored` in its
    place, plus its columns), unparsed."""
    text = (row.ad if stored is None else stored).rstrip()
    extra = dynamic(row)
    if _mentions_any(text) or not text.endswith("]"):
        # an ad that carries one of these names itself: let the library merge them
        ad = full_ad(row)
        if stored is not None:
            _redact(ad)
        return classads.to_text(ad)
    body = text[:-1].rstrip()
    parts = "; ".join(f"{name} = {literal(value)}" for name, value in extra.items())
    return f"{body}; {parts} ]" if body != "[" else f"[ {parts} ]"


def _redact(ad: Any) -> Any:
    for name in PRIVATE:
        if name in ad:
            del ad[name]
    return ad


class Redactor:
    """Job ads as other users see them: each distinct stored text (ProcId
    aside) is parsed and stripped of PRIVATE once, then reused per job."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._cuts: dict[str, tuple[str, str | None]] = {}

    def ad_text(self, row: Any) -> str:
        if not _mentions_any(row.ad, _PRIVATE_LOWER):
            return ad_text(row)
        found = _PROC.search(row.ad)
        key = row.ad if found is None else row.ad[: found.start(1)] + row.ad[found.end(1) :]
        cut = self._cuts.get(key)
        if cut is None:
            if len(self._cuts) >= self.limit:
                self._cuts.clear()
            text = classads.to_text(_redact(stored_ad(row.ad)))
            at = _PROC.search(text) if found is not None else None
            cut = self._cuts[key] = (
                (text, None) if at is None else (text[: at.start(1)], text[at.end(1) :])
            )
        before, after = cut
        stored = before if after is None else f"{before}{row.proc_id}{after}"
        return ad_text(row, stored)

    @staticmethod
    def long(row: Any) -> str:
        return classads.to_long(_redact(full_ad(row)))


class Matcher:
    """A constraint over job rows, evaluated on what `viewer` may see
    (None: everything, an admin): others' jobs without PRIVATE."""

    def __init__(self, expr: Any, viewer: str | None) -> None:
        self.expr = expr
        self.viewer = viewer
        self._own, self._others = AdCache(), AdCache(redact=True)

    def matches(self, row: Any) -> bool:
        cache = self._own if self.viewer in (None, row.owner) else self._others
        ad = cache.full_ad(row)
        return ad is not None and classads.constraint_matches(self.expr, ad)


class AdCache:
    """Parsed ads per distinct stored text, ProcId aside, reused across jobs
    (with `redact`, as other users see them).

    `full_ad` returns a shared ad changed in place: use it before the next
    call. An ad that cannot be read back (stored beyond the bounds by an
    older pool) is None: it matches no constraint and no policy.
    """

    def __init__(self, limit: int = 10_000, redact: bool = False) -> None:
        self.limit = limit
        self.redact = redact
        self._ads: dict[str, Any] = {}

    def full_ad(self, row: Any) -> Any:
        try:
            return self._full_ad(row)
        except classads.ClassAdError:
            return None

    def _full_ad(self, row: Any) -> Any:
        if _mentions_any(row.ad):
            # the stored ad sets one of them: keep jobs.full_ad's merge
            return _redact(full_ad(row)) if self.redact else full_ad(row)
        found = _PROC.search(row.ad)
        key = row.ad if found is None else row.ad[: found.start(1)] + row.ad[found.end(1) :]
        ad = self._ads.get(key)
        if ad is None:
            if len(self._ads) >= self.limit:
                self._ads.clear()
            ad = self._ads[key] = stored_ad(row.ad)
            if self.redact:
                _redact(ad)
        elif found is not None:
            ad["ProcId"] = int(found.group(1))
        values = dynamic(row)
        for name in DYNAMIC:
            if name in values:
                ad[name] = values[name]
            elif name in ad:
                del ad[name]
        return ad
