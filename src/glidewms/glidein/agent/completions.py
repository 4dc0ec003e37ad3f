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
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .http import Api, segment


class CompletionQueue:
    """Pending and in-flight results, oldest first."""

    def __init__(self) -> None:
        self._pending: List[Dict[str, Any]] = []
        self._since: Optional[float] = None  # when the oldest pending result arrived
        self._in_flight: Dict[str, Dict[str, Any]] = {}

    def add(self, result: Dict[str, Any], now: float) -> None:
        """A job ended: ``{"claim_id", "exit_code", "outputs", "wall_seconds"}``."""
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
        """How long the oldest pending result has waited; None if none waits."""
        return None if self._since is None else now - self._since

    def claim_ids(self) -> List[str]:
        """Claims whose results the pool has not answered for (heartbeats renew them)."""
        return [item["claim_id"] for item in self._pending] + list(self._in_flight)

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
