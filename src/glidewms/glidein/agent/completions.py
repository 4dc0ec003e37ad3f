"""Results of ended jobs on their way to the pool.

A job that ends does not call the pool by itself: its result waits here and
goes with the pilot's next claim call (``POST /pilots/{id}/cycle``), so a
busy pilot reports N ended jobs and asks for N new ones in one round trip,
as an HTCondor startd reuses its claim. Whatever the claim loop has not
taken after a short delay (it is blocked in a long-poll, or the pilot is
retiring) is sent alone by the completion thread, so no result waits long.

A result stays listed in heartbeats (its lease renewed) until the pool has
answered for it; a call that fails puts its results back for the next one.
The queue itself is not thread-safe: the agent uses it under its Condition.

A result may also be *held back* (``add(..., hold=seconds)``): a quick
failure that could still prove its node a black hole (policy.hold_back). It
stays out of the turns (listed in heartbeats all the same, so its claim's
lease lives) until its time is up, then waits like any other; once the pilot
declares a black hole (``freeze``) held results no longer come due and
``take_held`` hands them to the pool's black-hole call instead.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .http import Api, segment


class CompletionQueue:
    """Pending and in-flight results, oldest first."""

    def __init__(self) -> None:
        self._pending: List[Dict[str, Any]] = []
        self._since: Optional[float] = None  # when the oldest pending result arrived
        self._in_flight: Dict[str, Dict[str, Any]] = {}
        self._held: List[Tuple[float, Dict[str, Any]]] = []  # (due time, result), oldest first
        self._frozen = False  # a black hole: held results never come due
        self._cores: Dict[str, int] = {}  # claim -> cores its job held (core-seconds)

    def add(self, result: Dict[str, Any], now: float, cores: int = 1, hold: float = 0.0) -> None:
        """A job ended: ``{"claim_id", "exit_code", "outputs", "wall_seconds"}``;
        ``hold`` seconds before it may go (policy.hold_back)."""
        self._cores[result["claim_id"]] = max(1, cores)
        if hold > 0:
            self._held.append((now + hold, result))
            return
        self._queue(result, now)

    def _queue(self, result: Dict[str, Any], now: float) -> None:
        if not self._pending:
            self._since = now
        self._pending.append(result)

    def take(self, limit: int) -> List[Dict[str, Any]]:
        """Up to ``limit`` results for one call; they are in flight until settled."""
        batch = self._pending[:limit]
        del self._pending[:limit]
        if not self._pending:
            self._since = None
        for item in batch:
            self._in_flight[item["claim_id"]] = item
        return batch

    def settle(self, batch: List[Dict[str, Any]], delivered: bool, now: float) -> None:
        """The call carrying ``batch`` is over; not delivered: retry them first."""
        for item in batch:
            self._in_flight.pop(item["claim_id"], None)
        if not delivered and batch:
            self._pending[:0] = batch
            self._since = now if self._since is None else min(self._since, now)

    def age(self, now: float) -> Optional[float]:
        """How long the oldest pending result has waited (held results that came
        due join the pending ones first); None if none waits."""
        self.release(now)
        return None if self._since is None else now - self._since

    def release(self, now: float, everything: bool = False) -> int:
        """Held results whose time is up (or all of them) become pending; how many."""
        if not self._held or (self._frozen and not everything):
            return 0
        due = [r for t, r in self._held if everything or t <= now]
        self._held = [(t, r) for t, r in self._held if not (everything or t <= now)]
        for result in due:
            self._queue(result, now)
        return len(due)

    def next_due(self, now: float) -> Optional[float]:
        """Seconds until the next held result comes due; None if none will."""
        if self._frozen or not self._held:
            return None
        return max(0.0, self._held[0][0] - now)

    def freeze(self) -> None:
        """A black hole was declared: keep every held result (and any held later)."""
        self._frozen = True

    def take_held(self) -> List[Dict[str, Any]]:
        """The held results, for the pool's black-hole call; they leave the queue."""
        out = [r for _, r in self._held]
        self._held = []
        return out

    def held(self) -> int:
        return len(self._held)

    def cores(self, claim_id: str) -> int:
        """The cores the claim's job held (forgotten once asked: the claim is settled)."""
        return self._cores.pop(claim_id, 1)

    def claim_ids(self) -> List[str]:
        """Claims whose results the pool has not answered for (heartbeats renew them)."""
        return (
            [item["claim_id"] for item in self._pending]
            + list(self._in_flight)
            + [r["claim_id"] for _, r in self._held]
        )

    def __len__(self) -> int:
        return len(self._pending)


def send_alone(pool: Api, pilot_id: str, batch: List[Dict[str, Any]]) -> Dict[str, bool]:
    """Report ``batch`` without asking for work: one cycle call with ``max_jobs``
    0. Returns {claim_id: accepted}; raises HttpStatusError or TransportError
    if the call itself failed (nothing is known then)."""
    _, answer = pool.call(
        "POST", f"pilots/{segment(pilot_id)}/cycle", {"completions": batch, "max_jobs": 0}, tries=2
    )
    done = answer.get("completed") if isinstance(answer, dict) else None
    return {str(k): v is True for k, v in (done or {}).items()}
