"""WorkSignal: a notify for n jobs wakes n waiters, oldest first; a woken
waiter that finds nothing hands the wake on to waiters that have not looked
since, never back to itself; no wake is lost between a look and a wait."""

from __future__ import annotations

import asyncio

from glidewms.pool.routes.deps import WAKE_FANOUT, WorkSignal


def woken(waiters: list) -> list[int]:
    return [i for i, w in enumerate(waiters) if w.woken.done()]


def test_notify_wakes_as_many_as_new_jobs_oldest_first() -> None:
    async def go() -> None:
        signal = WorkSignal()
        waiters = [signal.enter() for _ in range(10)]
        signal.notify(1)
        assert woken(waiters) == [0] and signal.wakeups == 1
        signal.notify(3)
        assert woken(waiters) == [0, 1, 2, 3] and signal.wakeups == 4
        signal.notify(100)  # more jobs than waiters: every waiter, once
        assert len(woken(waiters)) == 10 and signal.wakeups == 10 and signal.waiting == 0

    asyncio.run(go())


def test_a_miss_hands_the_wake_on_only_to_those_that_have_not_looked_since() -> None:
    async def go() -> None:
        signal = WorkSignal(has_idle=lambda: True)
        waiters = [signal.enter() for _ in range(5)]
        signal.notify(1)
        token = waiters[0].token
        assert token is not None
        again = signal.enter()  # waiter 0 looked after the notify: at the back, seen it
        signal.missed(token)
        assert woken(waiters) == [0, *range(1, 1 + WAKE_FANOUT)]
        for _ in range(WAKE_FANOUT):  # the woken ones look, find nothing, hand on
            signal.enter()
            signal.missed(token)
        assert len(woken(waiters)) == 5  # everyone present at the notify looked once
        signal.missed(token)  # nobody is left who has not looked since
        assert not again.woken.done()

    asyncio.run(go())


def test_no_hand_on_when_nothing_is_idle_and_a_wake_is_never_lost() -> None:
    async def go() -> None:
        idle = [False]
        signal = WorkSignal(has_idle=lambda: idle[0])
        a, b = signal.enter(), signal.enter()
        signal.notify(1)
        assert a.woken.done()
        signal.missed(a.woken.result())
        assert not b.woken.done()  # nothing idle: the job was taken
        # a waiter woken while it was still looking keeps the wake: its wait returns at once
        c = signal.enter()
        signal.notify(2)
        assert await signal.wait(b, 0) is not None and await signal.wait(c, 0) is not None
        # one that leaves without using its wake hands it on
        d, e = signal.enter(), signal.enter()
        signal.notify(1)
        signal.leave(d)
        assert e.woken.done() and signal.waiting == 0
        # a wait that times out leaves the queue
        f = signal.enter()
        assert await signal.wait(f, 0.01) is None and signal.waiting == 0

    asyncio.run(go())
