"""What the pilot says to the pool: registration, turns, results, heartbeats, goodbye.

One call per turn, ``POST /pilots/{id}/cycle``, carries the results of the
jobs that ended and asks for as many jobs as cores are free (HTCondor's
claim reuse); a result the claim loop has not taken within
``COMPLETION_DELAY`` (it is long-polling, or the pilot no longer claims) is
sent alone by the completion thread (see completions.py). Heartbeats renew
the leases of the claims the pilot holds and bring back the pool's
instructions (kill these claims, drain).

A pool that says ``turns_renew_leases`` at registration renews the leases
in every turn too (the turn lists the running claims and its answer carries
``kill`` and ``drain``), and keeps a pilot inside a long-poll alive without
any call from it. So the pilot heartbeats only when a heartbeat is the one
thing that would renew something (`heartbeat_delay`): it holds claims or
unanswered results and has made no turn for a period, or it is not in a
long-poll and has not turned for a period, or its `retiring` changed. An
idle pilot in a long-poll sends none: at 20,000 pilots per pool that is
1,000 calls a second the pool no longer serves (docs/protocol.md).

`Exchange` works for a pilot (`agent.Agent`) through the `Pilot` interface
below and under the pilot's lock; it owns the pilot id, the results on their
way to the pool and the goodput/badput the pool's answers decide. Sandbox
files are not its business: each claim's runner moves them (claims.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol

from .completions import CompletionQueue, send_alone
from .http import (
    Api,
    HttpStatusError,
    IncompatiblePeer,
    TransportError,
    retry_delay,
    segment,
)
from .policy import Action, ExitReason, Step, gather_wait

log = logging.getLogger(__name__)

CLAIM_MARGIN = 30.0  # client timeout beyond the wait we asked for
MAX_CLAIMS_PER_CALL = 16  # claims asked for in one call when several cores are free
MAX_COMPLETIONS_PER_CALL = 64  # the pool takes up to 4 x its 64 claims per call
COMPLETION_DELAY = 0.05  # a result the claim loop has not taken by then is sent alone
GATHER = 0.005  # seconds a busy pilot waits for more free cores before a turn (policy.py)


@dataclass(frozen=True)
class Offer:
    """What the pilot can take in its next turn, read under its lock."""

    step: Step  # CLAIM (long-poll at most step.seconds) or WAIT, never EXIT
    running: int  # claims running now
    free: Dict[str, int]  # free resources, as a claim request names them
    cpus: int  # the slot's cores
    max_runtime: int  # seconds a new job may run before the pilot dies


class Pilot(Protocol):
    """What the exchange needs of the pilot it works for."""

    def offer(self) -> Optional[Offer]:
        """Under the lock: the next turn's offer; None once the pilot is ending."""

    def start_claim(self, claim: Dict[str, Any]) -> None:
        """Run a claim the pool handed out (or leave it to its lease)."""

    def finish(self, reason: ExitReason, detail: str) -> None:
        """End the pilot: the pool no longer knows it or refuses it."""

    def running_claims(self) -> List[str]:
        """Under the lock: the claims whose jobs run (their leases are renewed)."""

    @property
    def retiring(self) -> bool:
        """The pilot takes no new work (heartbeats say so)."""

    def follow(self, kill: List[str], drain: bool) -> None:
        """Apply a heartbeat's instructions: kill those claims' jobs; drain."""


def heartbeat_delay(
    now: float,
    interval: float,
    *,
    renews: bool,
    holds: bool,
    in_turn: bool,
    last_contact: float,
    retiring_changed: bool,
) -> float:
    """Seconds until the next heartbeat is due; 0: send one now.

    ``renews``: the pool renews leases in turns (else heartbeat every
    ``interval``, as before); ``holds``: running claims or results not yet
    answered for; ``in_turn``: a cycle call is open now (a long-poll: the
    pool sees the pilot connected); ``last_contact``: when the last turn was
    answered or the last heartbeat sent (monotonic). A retiring that changed
    is said at once."""
    if retiring_changed:
        return 0.0
    if renews and in_turn and not holds:
        return interval  # the long-poll keeps the pilot's lease: look again later
    return max(0.0, last_contact + interval - now)


class Exchange:
    """The claim loop, the completion loop, and the results at exit.

    ``lock`` is the pilot's Condition: offers are read and results settled
    under it, and it is notified when results go back to wait. ``finished``
    is set when the pilot ends; both loops return then.
    """

    def __init__(
        self, pool: Api, pilot: Pilot, *, lock: threading.Condition, finished: threading.Event
    ) -> None:
        self.pool = pool
        self.pilot = pilot
        self.pilot_id = ""  # the pool's, once registered
        self.completions = CompletionQueue()  # used under ``lock``
        self.goodput = 0.0  # wall seconds of results the pool accepted, exit code 0
        self.badput = 0.0  # wall seconds of the other results the pool answered for
        self.goodput_cores = 0.0  # the same, in core-seconds (wall x the job's cores)
        self.badput_cores = 0.0
        self.black_hole_requeued = 0  # held results the pool took back as site failures
        self.heartbeats = 0  # sent (tests, the pilot's report)
        self.turns_renew = False  # the pool said `turns_renew_leases` at registration
        self._in_turn = False  # a cycle call is open (set by the claim loop)
        self._last_contact = time.monotonic()  # last turn answered, or heartbeat sent
        self._told_retiring = False  # what the pool was last told
        self._lock = lock
        self._finished = finished

    def register(
        self, slot: Dict[str, Any], glidein_id: str, patience: float | None = None
    ) -> Dict[str, Any]:
        """Offer the slot to the pool; its answer (lease and heartbeat pace).
        An unreachable pool is waited for up to ``patience`` seconds."""
        _, answer = self.pool.call(
            "POST", "pilots", {"slot": slot, "glidein_id": glidein_id}, patience=patience
        )
        self.pilot_id = str(answer["pilot_id"])
        self.turns_renew = answer.get("turns_renew_leases") is True
        self._last_contact = time.monotonic()
        return answer

    def deregister(self, reason: ExitReason) -> None:
        """Say goodbye (the pool requeues what the pilot held at once); best effort."""
        if not self.pilot_id:
            return
        try:
            self.pool.call(
                "POST",
                f"pilots/{segment(self.pilot_id)}/deregister",
                {"reason": reason},
                timeout=10,
                tries=1,
            )
        except (HttpStatusError, TransportError, IncompatiblePeer) as exc:
            log.warning("deregister failed: %s", exc)

    def heartbeat_loop(self, interval: float) -> None:
        """Renew the leases of running claims and of results not yet answered
        for, when no turn did (`heartbeat_delay`), and follow the answer."""
        while True:
            with self._lock:
                claims = self.pilot.running_claims() + self.completions.claim_ids()
            retiring = bool(self.pilot.retiring)
            delay = heartbeat_delay(
                time.monotonic(),
                interval,
                renews=self.turns_renew,
                holds=bool(claims),
                in_turn=self._in_turn,
                last_contact=self._last_contact,
                retiring_changed=retiring != self._told_retiring,
            )
            if delay > 0:
                if self._finished.wait(delay):
                    return
                continue
            if self._finished.is_set():
                return
            # said both ways: a drain the pool lifted makes a retiring pilot take work again
            body: Dict[str, Any] = {"claims": claims, "retiring": retiring}
            self._last_contact = time.monotonic()  # tried: the next one a period later
            self.heartbeats += 1
            try:
                _, answer = self.pool.call(
                    "POST", f"pilots/{segment(self.pilot_id)}/heartbeat", body
                )
            except HttpStatusError as exc:
                if exc.status in (404, 410):
                    self.pilot.finish(
                        ExitReason.LOST, f"the pool no longer knows this pilot: {exc}"
                    )
                    return
                log.warning("heartbeat refused: %s", exc)
                continue
            except TransportError as exc:
                log.warning("heartbeat not delivered: %s", exc)
                continue
            self._told_retiring = retiring
            answer = answer if isinstance(answer, dict) else {}
            self.pilot.follow([str(c) for c in answer.get("kill") or []], bool(answer.get("drain")))

    def claim_loop(self) -> None:
        """Ask for work while resources are free, carrying the ended jobs' results."""
        failures = 0
        free_since: float | None = None  # when this turn's first core became free
        while not self._finished.is_set():
            with self._lock:
                offer = self.pilot.offer()
                if offer is None:
                    return
                step = offer.step
                if step.action is Action.WAIT:
                    self._lock.wait(step.seconds)
                    continue
                now = time.monotonic()
                free_since = now if free_since is None else free_since
                pause = gather_wait(
                    offer.running,
                    offer.free["cpus"],
                    min(MAX_CLAIMS_PER_CALL, offer.cpus),
                    now - free_since,
                    GATHER,
                )
                if pause > 0:
                    self._lock.wait(pause)
                    continue
                free_since = None
                batch = self.completions.take(MAX_COMPLETIONS_PER_CALL)
                body: Dict[str, Any] = {
                    "free": offer.free,
                    "wait": round(step.seconds, 3),
                    "max_runtime": offer.max_runtime,
                    "completions": batch,
                    "max_jobs": max(1, min(MAX_CLAIMS_PER_CALL, offer.free["cpus"])),
                }
                if self.turns_renew:  # renewed by the turn; its answer says kill/drain
                    body["claims"] = self.pilot.running_claims() + self.completions.claim_ids()
            self._in_turn = True
            try:
                status, answer = self.pool.call(
                    "POST",
                    f"pilots/{segment(self.pilot_id)}/cycle",
                    body,
                    timeout=step.seconds + CLAIM_MARGIN,
                    tries=1,
                )
                failures = 0
                self._last_contact = time.monotonic()
            except HttpStatusError as exc:
                self._settle(batch, None)
                if exc.status in (404, 410):
                    self.pilot.finish(
                        ExitReason.LOST, f"the pool no longer knows this pilot: {exc}"
                    )
                elif exc.status in (401, 403):
                    self.pilot.finish(ExitReason.ERROR, f"the pool refused the pilot token: {exc}")
                else:
                    failures = self._pause_after_failure(failures, exc)
                continue
            except TransportError as exc:
                self._settle(batch, None)
                failures = self._pause_after_failure(failures, exc)
                continue
            finally:
                self._in_turn = False
            if not isinstance(answer, dict):
                answer = {}
            done = answer.get("completed")
            self._settle(batch, done if isinstance(done, dict) else {})
            if "drain" in answer:  # a pool that answers as a heartbeat does
                kill = answer.get("kill")
                self.pilot.follow(
                    [str(c) for c in kill if isinstance(c, str)] if isinstance(kill, list) else [],
                    bool(answer.get("drain")),
                )
            claims = answer.get("claims") if status == 200 else None
            for claim in claims if isinstance(claims, list) else []:
                if isinstance(claim, dict):
                    self.pilot.start_claim(claim)

    def completion_loop(self) -> None:
        """Send results the claim loop did not take within COMPLETION_DELAY
        (it is long-polling, or not claiming at all)."""
        while True:
            with self._lock:
                while True:
                    if self._finished.is_set():
                        return
                    now = time.monotonic()
                    age = self.completions.age(now)
                    if age is not None and age >= COMPLETION_DELAY:
                        batch = self.completions.take(MAX_COMPLETIONS_PER_CALL)
                        break
                    # wake when the oldest result is due to go, or a held one comes due
                    waits = [COMPLETION_DELAY - age] if age is not None else []
                    due = self.completions.next_due(now)
                    waits += [due] if due is not None else []
                    self._lock.wait(min(waits) if waits else None)
            self._send_alone(batch)

    def flush(self) -> None:
        """At exit: every result still waiting, before the pilot deregisters
        (results still held back too: the pilot is not a black hole, or the
        pool did not answer its black-hole call and they go as they are)."""
        with self._lock:
            self.completions.release(time.monotonic(), everything=True)
            batch = self.completions.take(len(self.completions))
        if batch and self.pilot_id:
            try:
                self._settle(batch, send_alone(self.pool, self.pilot_id, batch))
            except (HttpStatusError, TransportError, IncompatiblePeer) as exc:
                log.warning("%d completion(s) not delivered at exit: %s", len(batch), exc)
                self._settle(batch, {})

    def report_black_hole(self, detail: str) -> None:
        """A black hole: hand the held results (quick failures within the window)
        to the pool, which requeues those jobs as site failures instead of
        completing them (``POST /pilots/{id}/black-hole``, docs/pool.md). Their
        time is badput either way. A call that fails leaves them held:
        ``flush`` then reports them as the jobs' own failures, never losing one."""
        with self._lock:
            self.completions.freeze()
            batch = self.completions.take_held()
        if not batch:
            return
        body = {
            "claims": [
                {k: item[k] for k in ("claim_id", "exit_code", "wall_seconds")} for item in batch
            ],
            "detail": detail[:1024],
        }
        try:
            _, answer = self.pool.call(
                "POST", f"pilots/{segment(self.pilot_id)}/black-hole", body, timeout=10, tries=2
            )
        except (HttpStatusError, TransportError, IncompatiblePeer) as exc:
            log.warning("black-hole victims not requeued (%s): reported as failures", exc)
            answer = {}
        taken = set(answer.get("requeued") or []) if isinstance(answer, dict) else set()
        with self._lock:
            for item in batch:
                if item["claim_id"] in taken:
                    cores = self.completions.cores(item["claim_id"])
                    self.badput += item["wall_seconds"]
                    self.badput_cores += item["wall_seconds"] * cores
                    self.black_hole_requeued += 1
                else:  # back to the results: flush() reports it as it is
                    self.completions.add(
                        item, time.monotonic(), self.completions.cores(item["claim_id"])
                    )
        log.warning(
            "black hole: %d of %d quick failures requeued by the pool", len(taken), len(batch)
        )

    def _send_alone(self, batch: List[Dict[str, Any]]) -> None:
        done: Dict[str, Any] | None = None
        try:
            done = send_alone(self.pool, self.pilot_id, batch)
        except HttpStatusError as exc:
            log.warning("completions not delivered: %s", exc)
            if exc.status in (404, 410):
                done = {}  # the pool dropped this pilot: they will never be accepted
        except TransportError as exc:
            log.warning("completions not delivered: %s", exc)
            self._finished.wait(self.pool.backoff)
        self._settle(batch, done)

    def _settle(self, batch: List[Dict[str, Any]], done: Dict[str, Any] | None) -> None:
        """The pool answered for ``batch`` ({claim: accepted}), or not (None: retry)."""
        if not batch:
            return
        with self._lock:
            self.completions.settle(batch, done is not None, time.monotonic())
            if done is None:
                self._lock.notify_all()
                return
            for item in batch:
                accepted = done.get(item["claim_id"]) is True
                cores = self.completions.cores(item["claim_id"])
                # a checkpoint taken is useful work, whatever its exit code
                if accepted and (not item["exit_code"] or "checkpoint" in item):
                    self.goodput += item["wall_seconds"]
                    self.goodput_cores += item["wall_seconds"] * cores
                else:
                    self.badput += item["wall_seconds"]
                    self.badput_cores += item["wall_seconds"] * cores
                if not accepted:
                    log.warning(
                        "claim %s: the pool no longer holds it; result dropped", item["claim_id"]
                    )

    def _pause_after_failure(self, failures: int, exc: Exception) -> int:
        """Wait before the next turn: the pool is down or overloaded, and
        every pilot of the pool saw it at once (jitter, Retry-After)."""
        delay = retry_delay(failures + 1, self.pool.backoff, getattr(exc, "retry_after", None))
        log.warning("claim failed: %s; next try in %.0fs", exc, delay)
        self._finished.wait(delay)
        return failures + 1
