"""Which claims a black-hole pilot may give back (pool/blackhole.py), as a table."""

from __future__ import annotations

import pytest

from glidewms.pool.blackhole import MAX_VICTIMS, Victim, victims

ME, OTHER = "p-me", "p-other"
HELD = {
    "c1": (ME, "running"),
    "c2": (ME, "running"),
    "theirs": (OTHER, "running"),
    "done": (ME, "completed"),  # cannot happen with the claim kept, but refused all the same
    "idle": (ME, "idle"),
}


@pytest.mark.parametrize(
    ("reported", "taken", "refused"),
    [
        ([Victim("c1", 127, 0.3)], ["c1"], {}),
        ([Victim("c1", 127, 0.3), Victim("c1", 127, 0.3)], ["c1"], {}),  # named twice: once
        ([Victim("c1", 0, 0.3)], [], {"c1": "exit code 0 is a success, not a black-hole victim"}),
        ([Victim("theirs", 1, 0.1)], [], {"theirs": "not a claim this pilot holds"}),
        ([Victim("unknown", 1, 0.1)], [], {"unknown": "not a claim this pilot holds"}),
        (
            [Victim("done", 1, 0.1), Victim("idle", 1, 0.1)],
            [],
            {
                "done": "the job is completed, not running under this claim",
                "idle": "the job is idle, not running under this claim",
            },
        ),
        ([Victim("c1", -9, 1.0), Victim("c2", 139, 2.0)], ["c1", "c2"], {}),  # signals too
    ],
    ids=["one", "twice", "success", "another-pilot", "unknown", "not-running", "signals"],
)
def test_victims(reported: list[Victim], taken: list[str], refused: dict[str, str]) -> None:
    take, no = victims(ME, reported, HELD, "2 jobs failed within 120s")
    assert sorted(take) == taken and no == refused
    for claim in taken:
        assert take[claim].startswith(f"black hole: pilot {ME} (2 jobs failed within 120s); ")


def test_victims_reason_says_how_the_job_failed() -> None:
    take, _ = victims(ME, [Victim("c1", 127, 0.25)], HELD, "")
    assert take["c1"] == (
        f"black hole: pilot {ME} (too many quick failures); this job exited 127 after 0.2s"
    )


def test_victims_are_bounded_per_call() -> None:
    held = {f"c{i}": (ME, "running") for i in range(MAX_VICTIMS + 5)}
    reported = [Victim(f"c{i}", 1, 0.1) for i in range(MAX_VICTIMS + 5)]
    take, refused = victims(ME, reported, held, "x")
    assert len(take) == MAX_VICTIMS
    assert set(refused) == {f"c{i}" for i in range(MAX_VICTIMS, MAX_VICTIMS + 5)}
