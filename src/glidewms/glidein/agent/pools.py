"""A pilot that serves several pools (docs/glidein.md, "Several pools").

The factory may start a pilot for a frontend group that names several pools,
each with a share (``--pool`` and ``--also-pool``, ``--pool-shares``; the
bootstrap writes ``GLIDEIN_Pool_URL``, ``GLIDEIN_Also_Pools`` and
``GLIDEIN_Pool_Shares``). The pilot then registers with each pool on its own
(each gives it a pilot id, a lease and a heartbeat pace) and each pool sees an
ordinary partitionable pilot whose ``free`` shrinks while the others' jobs run.

Every pool gets one ``exchange.Exchange`` (its claim, completion and heartbeat
loops, unchanged) working for a ``PoolPilot``: the agent as that pool sees it.
What is shared is decided here, under the agent's lock:

- **Turns.** One claim call is in flight at a time, whichever the pool: two
  calls in flight could both be handed the same free cores. The next turn
  goes to the pool ``choose_pool`` says (a pure function): the largest
  deficit, its share minus its share of the recent core-seconds, among the
  pools that are waiting for a turn; a pool whose last turn came back empty
  waits until the others have had a turn since; between equals, the
  one that waited longest (round robin when the pilot is idle). Each
  long-poll is at most ``POLL_SLICE`` seconds, and at most the idle time
  left divided by the pools served, so an idle pilot asks every pool in
  turn before it ends, and a job submitted to one waits at most a few
  slices.
- **Pools fail alone.** A call that fails ends that pool's turn at once (its
  loop then backs off alone); a pool that no longer knows the pilot, or
  refuses its token, is no longer served, and the pilot ends only when no
  pool is left. A pool unreachable at the start is registered with later.
- **Results go home.** A claim's sandbox transfers use its own pool's
  connection (``Agent.start_claim(pool=...)``), its result joins its own
  pool's queue (``Router``) and its lease is renewed by its own pool's
  heartbeats. Each pool is sent only its own token: the token file holds one
  ``pool URL TOKEN`` line per pool (``http.select_token``).

Still open (docs/scaling.md section 3): a call to hand back a claim the
pilot cannot take, and splitting ``pilot_core_seconds`` per pool.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .agent import Agent
from .completions import CompletionQueue
from .config import ConfigError, GlideinConfig
from .exchange import Exchange, Offer
from .http import Api, HttpStatusError, IncompatiblePeer, TransportError
from .policy import Action, ExitReason, Step, heartbeat_interval
from .resources import Resources, slot_ad

log = logging.getLogger(__name__)

MAX_POOLS = 8  # pools one pilot serves, at most (the factory's bound too)
MAX_SHARE = 999
POLL_SLICE = 5.0  # longest long-poll of one pool while the pilot serves several
TURN_WAIT = 1.0  # a loop waiting for its turn looks again at least this often
USAGE_HALFLIFE = 600.0  # seconds: how recent "recent core-seconds" is


# -- configuration --------------------------------------------------------------


def pool_list(values: Dict[str, str], first_url: str) -> List[Tuple[str, int]]:
    """The pools this pilot serves, with their shares, from glidein_config:
    ``GLIDEIN_Pool_URL`` first, then ``GLIDEIN_Also_Pools`` (URLs separated by
    blanks); ``GLIDEIN_Pool_Shares`` gives one positive integer per pool
    (commas), all 1 if absent. ConfigError names the key."""
    urls = [first_url.rstrip("/")] + [
        u.rstrip("/") for u in values.get("GLIDEIN_Also_Pools", "").split()
    ]
    if len(urls) > MAX_POOLS:
        raise ConfigError(f"GLIDEIN_Also_Pools: at most {MAX_POOLS} pools in all")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"GLIDEIN_Also_Pools: not an http(s) URL: {url[:200]!r}")
    if len(set(urls)) != len(urls):
        raise ConfigError("GLIDEIN_Also_Pools: a pool is named twice")
    raw = values.get("GLIDEIN_Pool_Shares", "")
    if not raw:
        return [(u, 1) for u in urls]
    words = [w.strip() for w in raw.split(",")]
    if len(words) != len(urls) or not all(w.isdigit() and 0 < int(w) <= MAX_SHARE for w in words):
        raise ConfigError(
            f"GLIDEIN_Pool_Shares: expected {len(urls)} integers 1-{MAX_SHARE} "
            f"separated by commas, got {raw[:200]!r}"
        )
    return [(url, int(words[i])) for i, url in enumerate(urls)]


# -- policy (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One pool as the turn policy sees it."""

    index: int
    share: float  # its weight among the pools served
    usage: float  # its recent core-seconds on this pilot (decayed)
    waiting: bool  # its loop waits for a turn now (not backing off, not gone)
    last_turn: float  # when its last turn ended (monotonic; -inf: never)
    empty_at: Optional[float] = None  # when a turn of it last came back empty


def deficit(share: float, usage: float, shares: float, usages: float) -> float:
    """A pool's share of the pilot minus its share of the recent core-seconds."""
    return share / shares - (usage / usages if usages > 0 else 0.0)


def choose_pool(pools: Sequence[Candidate]) -> Optional[int]:
    """The pool whose turn it is, among those waiting; None if none waits.

    Deficits count every pool served (one backing off still has its share).
    A pool whose last turn came back empty waits until every other waiting
    pool has had a turn since (one round, not a time: a busy pool's one
    empty answer must not cost it many turns); between equals the one whose
    last turn is oldest goes. The pool asked longest ago is never passed
    over, so an idle pilot asks the pools round robin.
    """
    shares = sum(p.share for p in pools)
    usages = sum(p.usage for p in pools)
    waiting = [p for p in pools if p.waiting]
    if not waiting or shares <= 0:
        return None

    def paused(p: Candidate) -> bool:
        return p.empty_at is not None and any(
            q.index != p.index and q.last_turn < p.empty_at for q in waiting
        )

    def rank(p: Candidate) -> Tuple[int, float, float]:
        if paused(p):
            return (0, 0.0, -p.last_turn)
        return (1, round(deficit(p.share, p.usage, shares, usages), 9), -p.last_turn)

    return max(waiting, key=rank).index


def turn_wait(idle_left: float, pools: int, poll_slice: float) -> float:
    """How long one pool's long-poll may last: a slice at most, and no more
    than its part of the idle time left, so that every pool is asked before
    the pilot's idle timeout (one pool's long wait would hide the others' jobs)."""
    return max(0.001, min(idle_left / max(1, pools), poll_slice))


def decay_usage(usage: float, cores: float, seconds: float, halflife: float) -> float:
    """Recent core-seconds after ``seconds`` more with ``cores`` running: the
    old ones fade by half every ``halflife`` seconds."""
    if seconds <= 0:
        return usage
    fade = 0.5 ** (seconds / halflife) if halflife > 0 else 1.0
    return usage * fade + cores * seconds


# -- one pool -------------------------------------------------------------------


class PoolApi(Api):
    """A pool's connection: its own ``pool URL TOKEN`` line, and a claim call
    that fails hands the turn on at once (its loop then backs off alone)."""

    def __init__(self, link: "Link", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link

    def call(self, method: str, path: str, body: Any = None, *args: Any, **kwargs: Any) -> Any:
        # a claim call (results alone, ``max_jobs`` 0, ask for no cores)
        cycle = path.endswith("/cycle") and isinstance(body, dict) and body.get("max_jobs") != 0
        if cycle:
            self.link.calls += 1
        try:
            return super().call(method, path, body, *args, **kwargs)
        except BaseException:
            if cycle:
                self.link.failed()
            raise


class Link:
    """One pool the pilot serves: its connection, exchange, claims and turns."""

    def __init__(self, agent: "MultiPoolAgent", index: int, url: str, share: int) -> None:
        cfg = agent.cfg
        self.agent = agent
        self.index = index
        self.url = url
        self.share = share
        self.api = PoolApi(
            self,
            url,
            cfg.token_file,
            backoff=agent.backoff,
            abort=agent.finished,
            check_version=True,
            ca_file=cfg.ca_file or None,
            token_key=url,
        )
        self.pilot = PoolPilot(agent, self)
        self.exchange = Exchange(self.api, self.pilot, lock=agent._cond, finished=agent.finished)
        self.registered = False
        self.gone = ""  # why this pool is no longer served
        self.drained = False
        self.interval = 60.0
        self.usage = 0.0
        self.waiting = False
        self.last_turn = float("-inf")
        self.empty_at: Optional[float] = None
        self.calls = 0  # claim calls made in the current turn
        self.got = 0  # claims the current turn brought

    def failed(self) -> None:
        """A claim call failed: the turn is over, another pool may go."""
        with self.agent._cond:
            self.agent.end_turn(self, time.monotonic(), failed=True)


class PoolPilot:
    """The agent as one pool's exchange sees it (exchange.Pilot)."""

    def __init__(self, agent: "MultiPoolAgent", link: Link) -> None:
        self.agent = agent
        self.link = link

    def offer(self) -> Optional[Offer]:
        return self.agent.turn_offer(self.link)

    def start_claim(self, claim: Dict[str, Any]) -> None:
        cid = str(claim.get("claim_id", ""))
        with self.agent._cond:
            self.link.got += 1
            self.agent.owner[cid] = self.link
            self.agent.starting.add(cid)  # not in the slot yet: not to be pruned
        try:
            self.agent.start_claim(claim, pool=self.link.api, tag=f"pool{self.link.index}")
        finally:
            with self.agent._cond:
                self.agent.starting.discard(cid)

    def finish(self, reason: ExitReason, detail: str) -> None:
        self.agent.pool_gone(self.link, reason, detail)

    def running_claims(self) -> List[str]:
        return [c for c in self.agent.slot.runners if self.agent.owner.get(c) is self.link]

    @property
    def retiring(self) -> bool:
        return self.link.drained or self.agent.retiring

    def follow(self, kill: List[str], drain: bool) -> None:
        self.agent.follow_pool(self.link, kill, drain)


class Router(CompletionQueue):
    """The slot's results queue: each result joins the queue of its claim's pool."""

    def __init__(self, agent: "MultiPoolAgent") -> None:
        super().__init__()
        self.agent = agent

    def add(self, result: Dict[str, Any], now: float, cores: int = 1, hold: float = 0.0) -> None:
        link = self.agent.owner.get(result["claim_id"])
        if link is None:  # cannot happen: every claim started here has its pool
            log.error("claim %s: no pool to send its result to", result["claim_id"])
            return
        link.exchange.completions.add(result, now, cores, hold)

    def freeze(self) -> None:
        for link in self.agent.links:
            link.exchange.completions.freeze()


# -- the pilot ------------------------------------------------------------------


class MultiPoolAgent(Agent):
    """An Agent whose slot is offered to several pools, taking turns."""

    def __init__(
        self,
        cfg: GlideinConfig,
        *,
        total: Optional[Resources] = None,
        backoff: float = 1.0,
        kill_grace: float = 10.0,
        poll_slice: float = POLL_SLICE,
    ) -> None:
        super().__init__(cfg, total=total, backoff=backoff, kill_grace=kill_grace)
        self.backoff = backoff
        self.poll_slice = poll_slice
        self.owner: Dict[str, Link] = {}  # claim -> its pool (pruned as claims end)
        self.starting: Set[str] = set()  # claims being started (owner known, not in the slot yet)
        self.links = [
            Link(self, i, url, share)
            for i, (url, share) in enumerate(pool_list(cfg.values, cfg.pool_url))
        ]
        self.pool = self.links[0].api
        self.exchange = self.links[0].exchange
        self.slot._results = Router(self)  # results find their pool (slot.py)
        self.in_flight: Optional[Link] = None
        self._accounted = time.monotonic()
        self._loops_started = False

    # -- turns (under the lock) ------------------------------------------------

    def _account(self, now: float) -> None:
        """Add the core-seconds since the last look to each pool's recent usage."""
        seconds, self._accounted = now - self._accounted, now
        running: Dict[int, float] = {}
        for cid, runner in self.slot.runners.items():
            link = self.owner.get(cid)
            if link is not None:
                cores = float(runner.spec.request.get("cpus", 1) or 1)
                running[link.index] = running.get(link.index, 0.0) + cores
        for link in self.links:
            link.usage = decay_usage(
                link.usage, running.get(link.index, 0.0), seconds, USAGE_HALFLIFE
            )
        # a claim whose job ended is no longer running anywhere; its result
        # was routed when it ended (Router.add under this lock)
        for cid in [c for c in self.owner if c not in self.slot.runners]:
            if cid not in self.starting:
                del self.owner[cid]

    def end_turn(self, link: Link, now: float, failed: bool = False) -> None:
        """``link``'s turn is over (its claims are started, or its call failed)."""
        if self.in_flight is not link:
            return
        self.in_flight = None
        log.debug("turn with %s over: %d claim(s), failed=%s", link.url, link.got, failed)
        if link.calls:
            link.last_turn = now
            link.empty_at = now if (failed or not link.got) else None
        link.waiting = False
        self._cond.notify_all()

    def turn_offer(self, link: Link) -> Optional[Offer]:
        """Under the lock: ``link``'s exchange asks what its next turn may take."""
        now = time.monotonic()
        self._account(now)
        self.end_turn(link, now)
        if link.gone:
            return None
        offer = self.offer()
        if offer is None:
            return None
        if offer.step.action is not Action.CLAIM or link.drained:
            link.waiting = False
            if offer.step.action is Action.CLAIM:  # drained by this pool only
                return replace(offer, step=Step(Action.WAIT, TURN_WAIT))
            return offer
        link.waiting = True
        if self.in_flight is None:
            chosen = choose_pool(self._candidates())
            if chosen == link.index:
                self.in_flight, link.waiting, link.calls, link.got = link, False, 0, 0
                # the idle time left is shared: every pool is asked before it runs out
                served = sum(1 for x in self.links if x.registered and not x.gone)
                wait = turn_wait(offer.step.seconds, served, self.poll_slice)
                return replace(offer, step=Step(Action.CLAIM, wait))
            if chosen is not None:
                self._cond.notify_all()  # wake the pool whose turn it is
        return replace(offer, step=Step(Action.WAIT, TURN_WAIT))

    def _candidates(self) -> List[Candidate]:
        return [
            Candidate(
                link.index,
                float(link.share),
                link.usage,
                link.waiting and link.registered and not link.gone and not link.drained,
                link.last_turn,
                link.empty_at,
            )
            for link in self.links
            if link.registered and not link.gone
        ]

    # -- what one pool says ------------------------------------------------------

    def pool_gone(self, link: Link, reason: ExitReason, detail: str) -> None:
        """A pool no longer knows this pilot, or refuses its token: stop serving it
        (its jobs here are killed: it requeued them); the pilot ends with the last."""
        with self._cond:
            if not link.gone:
                log.warning("pool %s no longer served: %s", link.url, detail)
                link.gone = detail or str(reason)
            self.end_turn(link, time.monotonic(), failed=True)
            victims = [r for c, r in self.slot.runners.items() if self.owner.get(c) is link]
            left = [x for x in self.links if not x.gone]
            self._cond.notify_all()
        for runner in victims:
            runner.kill(self.kill_grace)
        if not left:
            self.finish(reason, detail)

    def follow_pool(self, link: Link, kill: List[str], drain: bool) -> None:
        """A pool's heartbeat answer: kill only its own claims; its drain stops
        its turns, and the pilot drains when every pool it serves does."""
        with self._cond:
            mine = [c for c in kill if self.owner.get(c) is link]
            if drain != link.drained:
                log.info(
                    "pool %s %s this pilot", link.url, "drains" if drain else "no longer drains"
                )
                link.drained = drain
                self._cond.notify_all()
            live = [x for x in self.links if x.registered and not x.gone]
            everywhere = bool(live) and all(x.drained for x in live)
        self.follow(mine, everywhere)

    def _freeze_results(self) -> None:
        for link in self.links:
            link.exchange.completions.freeze()

    # -- lifecycle ---------------------------------------------------------------

    def register(self) -> float:
        """Register with every pool, each in its own thread (a pool that is down
        is waited for alone); return once one pool took the pilot, or raise the
        first pool's error when none did."""
        now = time.time()
        ad = slot_ad(self.cfg, self.slot.total, now + (self.die_at - time.monotonic()))
        ad["GLIDEIN_ToRetire"] = int(now + (self.deadline - time.monotonic()))
        errors: Dict[int, BaseException] = {}
        for link in self.links:
            threading.Thread(
                target=self._register_one, args=(link, ad, errors), daemon=True, name="register"
            ).start()
        with self._cond:
            while not any(x.registered for x in self.links) and len(errors) < len(self.links):
                self._cond.wait()
            if not any(x.registered for x in self.links):
                raise errors[min(errors)]
        self.idle_since = time.monotonic()
        return self.links[0].interval

    def _register_one(self, link: Link, ad: Dict[str, Any], errors: Dict[int, Any]) -> None:
        try:
            answer = link.exchange.register(
                ad, self.cfg.glidein_id, patience=self.cfg.outage_tolerance
            )
        except (HttpStatusError, TransportError, IncompatiblePeer, KeyError, TypeError) as exc:
            log.warning("registration with pool %s failed: %s", link.url, exc)
            with self._cond:
                link.gone = f"registration failed: {exc}"
                errors[link.index] = exc
                self._cond.notify_all()
            return
        link.interval = heartbeat_interval(
            float(answer.get("heartbeat_seconds") or 0),
            float(answer.get("lease_seconds") or 0),
            float(self.cfg.heartbeat or 0),
        )
        log.info(
            "registered with pool %s (share %d) as pilot %s; heartbeat every %.0fs",
            link.url,
            link.share,
            link.exchange.pilot_id,
            link.interval,
        )
        self.trail.add("INFO", "registered", f"pilot {link.exchange.pilot_id} at {link.url}")
        with self._cond:
            link.registered = True
            start_now = self._loops_started
            self._cond.notify_all()
        if start_now:  # a pool that came late: its loops start here
            self._start(self._pool_loops(link))

    def _pool_loops(self, link: Link) -> List[Tuple[Any, Tuple[Any, ...]]]:
        return [
            (link.exchange.heartbeat_loop, (link.interval,)),
            (link.exchange.claim_loop, ()),
            (link.exchange.completion_loop, ()),
        ]

    def _start(self, loops: List[Tuple[Any, Tuple[Any, ...]]]) -> None:
        for target, args in loops:
            threading.Thread(
                target=self._guarded, args=(target, *args), daemon=True, name=target.__name__
            ).start()

    def _loops(self, interval: float) -> List[Tuple[Any, Tuple[Any, ...]]]:
        with self._cond:
            self._loops_started = True
            ready = [x for x in self.links if x.registered]
        base = [
            x
            for x in super()._loops(interval)
            if getattr(x[0], "__self__", None) is not self.exchange
        ]
        return [loop for link in ready for loop in self._pool_loops(link)] + base

    def _shutdown(self) -> None:
        """Vacate, then, for each pool still served: its results, then goodbye."""
        self.slot.vacate(self.kill_grace)
        if self.reason is not None and self.reason is not ExitReason.LOST:
            for link in self.links:
                if link.registered and not link.gone:
                    if self.reason is ExitReason.BLACK_HOLE:
                        link.exchange.report_black_hole(self.detail)
                    link.exchange.flush()
                    link.exchange.deregister(self.reason)
        self._release_mounts()
        if self._own_job_root:
            shutil.rmtree(self.job_root, ignore_errors=True)

    def report_body(self) -> Dict[str, Any]:
        """The final report, goodput and badput summed over the pools."""
        body = super().report_body()
        ex = [x.exchange for x in self.links]
        body["goodput_seconds"] = round(sum(e.goodput for e in ex), 3)
        body["goodput_core_seconds"] = round(sum(e.goodput_cores for e in ex), 3)
        body["badput_seconds"] = round(self.slot.badput + sum(e.badput for e in ex), 3)
        body["badput_core_seconds"] = round(
            self.slot.badput_cores + sum(e.badput_cores for e in ex), 3
        )
        body["black_hole_requeued"] = sum(e.black_hole_requeued for e in ex)
        body["pools"] = [
            {"url": x.url, "share": x.share, "pilot_id": x.exchange.pilot_id, "gone": x.gone}
            for x in self.links
        ]
        return body


def serves_several(cfg: GlideinConfig) -> bool:
    """Whether glidein_config names more pools than one."""
    return bool(cfg.values.get("GLIDEIN_Also_Pools", "").split())
