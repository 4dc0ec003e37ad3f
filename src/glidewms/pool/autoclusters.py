"""Autoclusters: the kinds of job, by the attributes that can change a match.

A job's autocluster is resolved at submit and at edit; matching and demand
read the autoclusters' ads into the matchmaker. Autoclusters are never
deleted, so both are answered from memory once seen.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool.jobs import Derived
from glidewms.pool.schema import autoclusters
from glidewms.pool.shared import Shared


class Autoclusters:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self._ids: dict[str, int] = {}  # signature -> id
        self._lock = threading.Lock()  # not the store's: submits take it without that one

    def id_for(self, d: Derived, now: float) -> int:
        """The id of the autocluster of jobs derived as `d`, created in its own
        transaction if new, so concurrent submits of the same kind of job never
        collide."""
        known = self._ids.get(d.signature)
        if known is not None:
            return known
        with self._lock:
            ac = self._find_or_create(d, now)
            self._ids[d.signature] = ac
            return ac

    def _find_or_create(self, d: Derived, now: float) -> int:
        engine = self.shared.engine
        for _ in range(2):
            with engine.begin() as conn:
                row = conn.execute(
                    sa.select(autoclusters.c.id).where(autoclusters.c.signature == d.signature)
                ).first()
                if row:
                    return int(row[0])
            try:
                with engine.begin() as conn:
                    key = conn.execute(
                        autoclusters.insert().values(
                            signature=d.signature, ad=d.signature_ad, created_at=now
                        )
                    ).inserted_primary_key
                    assert key is not None  # a single-row insert always has one
                    return int(key[0])
            except sa.exc.IntegrityError:
                continue  # created meanwhile (by a submit that failed later): read it back
        raise RuntimeError(f"cannot create autocluster {d.signature}")

    def load_ads(self, conn: Connection, ids: list[int]) -> dict[int, Any]:
        """The ads of these autoclusters, read into the matchmaker when new to it."""
        matchmaker = self.shared.matchmaker
        missing = [i for i in ids if i not in matchmaker.ads]
        if missing:
            for r in conn.execute(
                sa.select(autoclusters.c.id, autoclusters.c.ad).where(
                    autoclusters.c.id.in_(missing)
                )
            ):
                matchmaker.remember(r.id, r.ad)
        return {i: matchmaker.ads[i] for i in ids}
