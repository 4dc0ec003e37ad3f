"""Lease renewals kept in memory and written in one batch per upkeep pass.

A heartbeat used to be one write transaction (~1.3 ms of pool CPU): at the
20 s period, heartbeats alone filled the pool's core at ~15,000 pilots
(bench/RESULTS.md, "Pilot swarm"). Here a heartbeat, a turn, or the end of
a long-poll only notes *when* the pilot (and the claims it holds) was last
seen; `Pilots.expire_leases` writes every renewal noted since the last pass
in the same transaction as the expiry, just before it looks for expired
leases (`take`). So a renewal is never later in the database than the
expiry that would need it, and N renewals cost one executemany per pass, not
N transactions.

A pilot inside a long-poll (`cycle` with `wait`) is provably connected: it
is `connect`ed while the poll lasts, and expiry skips it (its lease in the
database is renewed then, once per lease at most, so a pool whose longest
wait exceeds the lease does not pick it up again each pass). When the poll
ends for any reason, the answer sent, the client gone (the route watches the
connection), or the request cancelled, `disconnect` notes it as seen at that
moment: a pilot whose connection dropped is found lost one
`pilot_lease_seconds` after the drop, as a silent pilot always was. A host
that vanishes without closing its TCP connection looks connected until its
long-poll ends (at most `max_claim_wait`), so it is found within
`max_claim_wait + pilot_lease_seconds`.

Nothing here needs to survive a crash: renewals not yet written when the
pool dies are harmless, because at start the pool gives every live pilot
and running claim a full lease anyway (`Pilots.renew_after_restart`).

Thread-safe: the routes' event loop and the store's worker threads both
note renewals; one small lock guards the dicts (no I/O under it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Renewals:
    """What one pass writes: when each pilot and each claim was last seen."""

    pilots: dict[str, float] = field(default_factory=dict)  # pilot -> seen
    claims: dict[str, tuple[str, float]] = field(default_factory=dict)  # claim -> (pilot, seen)


class LeaseBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = Renewals()
        self._connected: dict[str, int] = {}  # pilot -> long-polls open now

    def seen(self, pilot: str, claims: Iterable[str], now: float) -> None:
        """The pilot (and these claims of its) showed it is alive at `now`."""
        with self._lock:
            pending = self._pending
            if pending.pilots.get(pilot, 0.0) < now:
                pending.pilots[pilot] = now
            for claim in claims:
                old = pending.claims.get(claim)
                if old is None or old[1] < now:
                    pending.claims[claim] = (pilot, now)

    def connect(self, pilot: str) -> None:
        """A long-poll of this pilot began: it is alive while it lasts."""
        with self._lock:
            self._connected[pilot] = self._connected.get(pilot, 0) + 1

    def disconnect(self, pilot: str, now: float | None) -> None:
        """A long-poll ended (answered, dropped or cancelled): last seen `now`
        (None: the call was refused, so it showed nothing of the pilot)."""
        with self._lock:
            left = self._connected.get(pilot, 0) - 1
            if left > 0:
                self._connected[pilot] = left
            else:
                self._connected.pop(pilot, None)
            if now is not None and self._pending.pilots.get(pilot, 0.0) < now:
                self._pending.pilots[pilot] = now

    def take(self) -> Renewals:
        """The renewals noted since the last take (they are forgotten here:
        the caller writes them)."""
        with self._lock:
            pending, self._pending = self._pending, Renewals()
            return pending

    def give_back(self, renewals: Renewals) -> None:
        """A pass that failed to write `renewals`: keep them for the next."""
        with self._lock:
            for pilot, seen in renewals.pilots.items():
                if self._pending.pilots.get(pilot, 0.0) < seen:
                    self._pending.pilots[pilot] = seen
            for claim, (pilot, seen) in renewals.claims.items():
                old = self._pending.claims.get(claim)
                if old is None or old[1] < seen:
                    self._pending.claims[claim] = (pilot, seen)

    def is_connected(self, pilot: str) -> bool:
        with self._lock:
            return pilot in self._connected

    def alive(self, pilot: str) -> bool:
        """Connected now, or seen since the last `take`: an expiry must not
        declare it lost even if its lease in the database ran out (the
        sighting is written by the next pass). Asked after the expiry's
        SELECT, it closes the window between `take` and that SELECT."""
        with self._lock:
            return pilot in self._connected or pilot in self._pending.pilots

    def claim_seen(self, claim: str) -> bool:
        """This claim was renewed since the last `take` (see `alive`)."""
        with self._lock:
            return claim in self._pending.claims

    @property
    def connected(self) -> int:
        """How many pilots are in a long-poll now (metrics, the swarm bench)."""
        return len(self._connected)
