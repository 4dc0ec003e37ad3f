"""The job and pilot lifecycles: the tables, the check that refuses every move
they do not list, the store obeying them, and docs/pool.md drawing them."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.exit import Completion
from glidewms.pool.jobs import NewJob
from glidewms.pool.lifecycle import (
    ENDED_PILOTS,
    JOB,
    JOB_STATUS,
    LIVE_PILOTS,
    PILOT,
    TERMINAL_JOBS,
    IllegalTransition,
    JobCause,
    JobState,
    Lifecycle,
    PilotCause,
    PilotState,
)
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.store import PoolStore

ROOT = Path(__file__).resolve().parents[2]
IDLE, RUN, HELD, REMOVED, DONE = "idle", "running", "held", "removed", "completed"

# The tables, written out again by hand: a change to lifecycle.py must be
# made here too, on purpose.
JOB_MOVES = [
    (None, IDLE, "submit"),
    (IDLE, RUN, "claim"),
    (IDLE, HELD, "hold"),
    (RUN, HELD, "hold"),
    (HELD, IDLE, "release"),
    (IDLE, REMOVED, "remove"),
    (RUN, REMOVED, "remove"),
    (HELD, REMOVED, "remove"),
    (IDLE, IDLE, "edit"),
    (HELD, HELD, "edit"),
    (RUN, DONE, "exit"),
    (RUN, IDLE, "exit"),
    (RUN, HELD, "exit"),
    (RUN, IDLE, "evict"),
    (RUN, HELD, "evict"),
]
PILOT_MOVES = [
    (None, "active", "register"),
    ("active", "gone", "deregister"),
    ("draining", "gone", "deregister"),
    ("active", "draining", "drain"),
    ("draining", "active", "undrain"),
    ("active", "lost", "expire"),
    ("draining", "lost", "expire"),
]
LIFECYCLES = {"job": (JOB, JobCause, JOB_MOVES), "pilot": (PILOT, PilotCause, PILOT_MOVES)}


def table(life: Lifecycle[Any]) -> list[tuple[str | None, str, str]]:
    return [(t.source, t.target, t.cause) for t in life.transitions]


def test_states_are_the_strings_the_database_and_json_carry() -> None:
    assert [s.value for s in JobState] == [IDLE, RUN, HELD, REMOVED, DONE]
    assert [s.value for s in PilotState] == ["active", "draining", "gone", "lost"]
    # a row's plain string finds what is keyed by the member, and the reverse
    assert JOB_STATUS["held"] == 5 and {"idle": 1}[JobState.IDLE] == 1
    assert JobState.RUNNING == "running" and f"{JobState.RUNNING}" == "running"


def test_every_job_state_has_htcondors_job_status() -> None:
    assert {str(s): n for s, n in JOB_STATUS.items()} == {
        IDLE: 1,
        RUN: 2,
        REMOVED: 3,
        DONE: 4,
        HELD: 5,
    }


@pytest.mark.parametrize("name", LIFECYCLES)
def test_the_table_is_the_one_written_here(name: str) -> None:
    life, _, moves = LIFECYCLES[name]
    assert table(life) == moves


@pytest.mark.parametrize(
    ("name", "move"), [(name, move) for name, (_, _, moves) in LIFECYCLES.items() for move in moves]
)
def test_every_listed_transition_is_allowed(name: str, move: tuple[str | None, str, str]) -> None:
    life = LIFECYCLES[name][0]
    assert life.allows(*move)
    life.check(*move)


def unlisted(name: str) -> Iterator[tuple[str | None, str, str]]:
    life, causes, moves = LIFECYCLES[name]
    for source, target, cause in itertools.product([None, *life.states], life.states, causes):
        if (source, target, cause) not in moves:
            yield source, target, cause


@pytest.mark.parametrize("name", LIFECYCLES)
def test_every_other_transition_is_refused_with_a_clear_error(name: str) -> None:
    life = LIFECYCLES[name][0]
    refused = 0
    for source, target, cause in unlisted(name):
        assert not life.allows(source, target, cause)
        with pytest.raises(IllegalTransition) as err:
            life.check(source, target, cause)
        assert f"{cause} cannot move a {name} from {source or '(new)'} to {target}" in str(
            err.value
        )
        refused += 1
    assert refused == (len(life.states) + 1) * len(life.states) * len(LIFECYCLES[name][1]) - len(
        LIFECYCLES[name][2]
    )


NEVER = {
    "a completed job never comes back": (JOB, DONE, IDLE, "release"),
    "nor does a removed one": (JOB, REMOVED, IDLE, "release"),
    "a held job is not claimed": (JOB, HELD, RUN, "claim"),
    "only a running job's process ends": (JOB, IDLE, DONE, "exit"),
    "only a running job is evicted": (JOB, IDLE, IDLE, "evict"),
    "a running job is not edited": (JOB, RUN, RUN, "edit"),
    "a pilot that left is not lost later": (PILOT, "gone", "lost", "expire"),
    "nor does it come back": (PILOT, "lost", "active", "register"),
}


@pytest.mark.parametrize("case", NEVER)
def test_moves_the_pool_must_never_make(case: str) -> None:
    life, *move = NEVER[case]
    with pytest.raises(IllegalTransition):
        life.check(*move)


def test_the_questions_the_store_asks() -> None:
    assert JOB.sources(JobCause.HOLD) == (IDLE, RUN)
    assert JOB.sources(JobCause.RELEASE) == (HELD,)
    assert JOB.sources(JobCause.REMOVE) == (IDLE, RUN, HELD)
    assert JOB.sources(JobCause.EDIT) == (IDLE, HELD)
    assert (JOB.source(JobCause.CLAIM), JOB.target(JobCause.CLAIM)) == (IDLE, RUN)
    assert JOB.source(JobCause.EXIT) == JOB.source(JobCause.EVICT) == RUN
    assert JOB.target(JobCause.SUBMIT) == IDLE
    assert set(TERMINAL_JOBS) == {DONE, REMOVED}
    assert LIVE_PILOTS == ("active", "draining") and set(ENDED_PILOTS) == {"gone", "lost"}
    with pytest.raises(ValueError, match="not to one state"):
        JOB.target(JobCause.EXIT)
    with pytest.raises(ValueError, match="not from one state"):
        JOB.source(JobCause.REMOVE)


# ---------------------------------------------------------------- the store obeys

AD = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 16; Requirements = true ]'
SLOT = {"Cpus": 1, "Memory": 64, "Disk": 1000, "GLIDEIN_Site": "A"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PoolStore]:
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.sqlite")))
    yield store
    store.close()


def job_in(store: PoolStore, state: str) -> Any:
    """A job brought to `state` by the store's own paths."""
    _, [jid] = store.queue.submit("alice", [NewJob(AD, [], [], {})])
    if state in (RUN, DONE):
        pid = store.pilots.register(dict(SLOT), "g", PilotOwner("pilot", "fe", "main"), 3600)
        claim = store.turns.claim(pid, {}, 600)
        assert claim is not None and claim["job_id"] == jid
        if state == DONE:
            store.turns.cycle(pid, [Completion(claim["claim_id"], 0)], {}, 600, 0, time.time())
    elif state in (HELD, REMOVED):
        action = JobCause.HOLD if state == HELD else JobCause.REMOVE
        store.actions.act(action, [store.queue.get_job(jid)], "", "alice")
    row = store.queue.get_job(jid)
    assert row.state == state
    return row


@pytest.mark.parametrize(
    ("start", "action"),
    list(
        itertools.product(
            [IDLE, RUN, HELD, REMOVED, DONE], [JobCause.HOLD, JobCause.RELEASE, JobCause.REMOVE]
        )
    ),
)
def test_hold_release_remove_move_a_job_exactly_as_the_table_says(
    store: PoolStore, start: str, action: JobCause
) -> None:
    row = job_in(store, start)
    target = JOB.target(action)
    changed = store.actions.act(action, [row], "test", "alice")
    after = store.queue.get_job(f"{row.cluster_id}.{row.proc_id}").state
    if JOB.allows(start, target, action):
        assert changed and after == target
    else:
        assert not changed and after == start
    # the in-memory queue agrees with the database either way
    counts = store.reports.queue_counts()
    assert counts == {"idle": int(after == IDLE), "running": int(after == RUN)}


# ---------------------------------------------------------------- the drawing

_BLOCK = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)
_EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\w+)\s*:\s*(\w+)\s*$")


def drawn(name: str) -> list[tuple[str | None, str, str]]:
    text = (ROOT / "docs" / "pool.md").read_text()
    blocks = [b for b in _BLOCK.findall(text) if f"%% lifecycle: {name}\n" in b]
    assert len(blocks) == 1, f"docs/pool.md should draw the {name} lifecycle once"
    edges = []
    for line in blocks[0].splitlines():
        found = _EDGE.match(line)
        if found:
            source, target, cause = found.groups()
            edges.append((None if source == "[*]" else source, target, cause))
        else:
            assert line.strip() in ("stateDiagram-v2", f"%% lifecycle: {name}"), line
    return edges


@pytest.mark.parametrize("name", LIFECYCLES)
def test_docs_draw_exactly_the_table(name: str) -> None:
    life = LIFECYCLES[name][0]
    assert Counter(drawn(name)) == Counter(table(life)), (
        f"docs/pool.md's {name} diagram differs from lifecycle.{name.upper()}"
    )
